"""``recu train`` and ``recu eval``."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train a model. Launch with torchrun for several GPUs or machines. A "
                                   "non-finite loss, gradient or weight ends the run with exit status 1 and "
                                   "last.pt/best.pt at the last finite epoch (--resume continues from it); "
                                   "--set on_nonfinite=skip skips such steps instead.")
    p.add_argument("--config", "-c", help="YAML config (see configs/); the defaults are the CIFAR-10 ResNet-20 recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set epochs=10 --set binary.clamp=mask (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in out_dir/name from its last.pt (an error when there is none)")
    p.add_argument("--data-dir", help="shortcut for --set data_dir=PATH")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="end the job after epoch N (e.g. a cluster time slice); --resume continues it")
    p.add_argument("--time-limit", type=_duration, metavar="DURATION",
                   help="wall-clock budget for this job, e.g. 2h30m, 90m or 5400 (seconds): it stops after the "
                        "last epoch that fits (estimated from the epoch before, +10%%), with its checkpoint "
                        "written; --resume continues it")
    p.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on its data set's test split",
                       description="Print one JSON line: loss, top-1 and top-5 (%%) on the test split, and "
                                   "for a folder data set or CIFAR each class's top-1 by name (per_class).")
    e.add_argument("checkpoint", help="a checkpoint file, or a model name with --pretrained")
    e.add_argument("--pretrained", action="store_true",
                   help="CHECKPOINT is a model name: evaluate its shipped trained weights (recu.pretrained)")
    e.add_argument("--dataset", help="data set (default: the one the checkpoint was trained on)")
    e.add_argument("--data-dir", help="data folder (default: the checkpoint's)")
    e.add_argument("--batch-size", type=int, default=1000)
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_eval)


def _duration(text: str) -> float:
    from ..train.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _train(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, train

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    cfg = TrainConfig.from_yaml(args.config, overrides)
    result = train(cfg, resume=args.resume, stop_after=args.stop_after, time_limit=args.time_limit)
    if result.get("final_top1") is not None and result["last_epoch"] == result["epochs"]:
        print(f"final test top-1 {result['final_top1']:.2f}% (best {result['best_top1']:.2f}% "
              f"at epoch {result['best_epoch'] + 1}); run in {result['run_dir']}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..data import build_test_loader
    from ..train import TrainConfig, evaluate, load_checkpoint, model_from_checkpoint
    from ..train.per_class import class_hits, per_class_report
    from ..train.distributed import resolve_device

    if args.pretrained:
        from ..pretrained import path as pretrained_path

        args.checkpoint = str(pretrained_path(args.checkpoint, "checkpoint"))
    state = load_checkpoint(args.checkpoint)
    cfg = state.get("config", {})
    device = resolve_device(args.device)
    dataset = args.dataset or cfg.get("dataset", "cifar10")
    folder = TrainConfig.from_dict(cfg).folder_options() if dataset == "folder" else None
    test = build_test_loader(dataset, args.data_dir or cfg.get("data_dir"), batch_size=args.batch_size,
                             device=device, workers=int(cfg.get("workers", 4)), folder=folder)
    names = state.get("class_names")
    found = getattr(test, "class_names", None)
    if names is not None and found is not None and list(found) != list(names):
        raise ValueError(f"the test folder's classes {list(found)[:5]} are not the {len(names)} classes the "
                         f"checkpoint was trained on ({list(names)[:5]} ...)")
    model = model_from_checkpoint(state, args.checkpoint).to(device)
    result = evaluate(model, test, device)
    names = names or found  # a checkpoint from before CIFAR runs kept their names: the data set's
    if names:  # a second pass, for data sets whose classes have names (folder data sets, CIFAR)
        result["per_class"] = per_class_report(names, *class_hits(model, test, device, len(names)))
    print(json.dumps({"checkpoint": args.checkpoint, "epoch": state.get("epoch"), **result}))
    return 0

"""``recu convert-authors``: an authors' checkpoint (github.com/z-hXu/ReCU main.py) -> a recu checkpoint."""

from __future__ import annotations

import argparse

# The data set a checkpoint's classifier size implies, for `recu eval`'s default.
_DATASET_BY_CLASSES = {10: "cifar10", 100: "cifar100", 1000: "imagenet"}


def _authors_models() -> dict[str, tuple[str, str]]:
    """The convertible models; empty where PyTorch is not installed (the command then says so when run)."""
    try:
        from ..models.authors import AUTHORS_MODELS
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        return {}
    return AUTHORS_MODELS


def register(sub: argparse._SubParsersAction) -> None:
    models = _authors_models()
    c = sub.add_parser(
        "convert-authors", help="convert a checkpoint of the ReCU authors' code into a recu checkpoint",
        description="Read a checkpoint the authors' main.py saved (a dict with 'state_dict', keys with or "
                    "without 'module.') and write a recu checkpoint that `recu eval`, the analysis commands "
                    "and (with --sign-at-zero plus_one) `recu export` read.")
    c.add_argument("checkpoint", help="the authors' file, e.g. model_best.pth.tar")
    c.add_argument("--model", required=True, choices=sorted(models) or None, metavar="NAME",
                   help="which recu model it is: " + (", ".join(
                       f"{n} (their {a} from {f.split('/')[0]}/)" for n, (a, f) in sorted(models.items()))
                       or "(needs PyTorch)"))
    c.add_argument("-o", "--output", required=True, help="the recu checkpoint to write, e.g. resnet20.pt")
    c.add_argument("--sign-at-zero", choices=["zero", "plus_one"], default="zero",
                   help="zero (default): binarise exactly 0 to 0 like the authors' torch.sign, so outputs are "
                        "theirs; plus_one: recu's +1, which a 1-bit export needs (differs only on exact zeros)")
    c.add_argument("--dataset", choices=["cifar10", "cifar100", "imagenet"],
                   help="the data set `recu eval` uses by default (default: from the number of classes)")
    c.add_argument("--data-dir", help="its folder, stored for `recu eval` (default: none; pass --data-dir there)")
    c.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..models.authors import authors_epoch, load_authors_checkpoint
    from ..train.checkpoint import save_checkpoint

    model = load_authors_checkpoint(args.checkpoint, args.model, sign_at_zero=args.sign_at_zero)
    spec = model.recu_spec
    dataset = args.dataset or _DATASET_BY_CLASSES.get(spec["num_classes"])
    config = {"name": f"authors_{args.model}", "model": args.model, "converted_from": args.checkpoint}
    if dataset:
        config["dataset"] = dataset
    if args.data_dir:
        config["data_dir"] = args.data_dir
    state = {
        "model": model.state_dict(),
        "model_spec": spec,
        "epoch": authors_epoch(args.checkpoint),
        "config": config,
        "recu_version": __version__,
    }
    save_checkpoint(state, args.output)
    print(f"wrote {args.output}: recu {args.model} ({spec['num_classes']} classes, "
          f"sign_at_zero={args.sign_at_zero}) from the authors' {args.checkpoint}")
    return 0

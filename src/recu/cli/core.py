"""``recu models`` and ``recu summary``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list the models the registry can create")
    m.set_defaults(func=_models)
    s = sub.add_parser("summary", help="parameters, memory, BOPs and FLOPs of a model, per layer")
    s.add_argument("model", help="a name from `recu models`")
    s.add_argument("--input-size", type=int, nargs="+", metavar="N",
                   help="one sample's shape, e.g. 3 32 32 (default: 3 224 224 for *_imagenet, else 3 32 32)")
    s.add_argument("--num-classes", type=int, help="default: the model's own (1000 for ImageNet models, else 10)")
    s.set_defaults(func=_summary)


def _models(args: argparse.Namespace) -> int:
    from .. import pretrained
    from ..models import available

    for name in available():
        if name in pretrained.PRETRAINED:
            entry = pretrained.PRETRAINED[name]
            print(f"{name}  (pretrained: {entry.dataset} test top-1 {entry.test_top1:.2f}%)")
        else:
            print(name)
    return 0


def _summary(args: argparse.Namespace) -> int:
    from ..models import create
    from ..summary import summary

    imagenet = "imagenet" in args.model or args.model.startswith("reactnet")
    size = args.input_size or ([3, 224, 224] if imagenet else [3, 32, 32])
    model = create(args.model, num_classes=args.num_classes)  # None: the model's own
    print(summary(model, size))
    return 0

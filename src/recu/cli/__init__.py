"""The ``recu`` command. Each sub-command lives in its own module of this package.

A module listed in ``_COMMAND_MODULES`` defines ``register(subparsers)``, which adds its
sub-commands with ``set_defaults(func=...)``; ``func(args)`` returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

_COMMAND_MODULES = ("core", "train", "analysis", "deploy", "authors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recu",
        description="ReCU binary neural networks: train, analyse and deploy 1-bit models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"recu {args.command}: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        # a runtime-only install (pip install recu-bnn[runtime]) has no PyTorch; say what to install
        from .._lazy import TORCH_HINT

        print(f"recu {args.command}: error: this command needs PyTorch: {TORCH_HINT}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

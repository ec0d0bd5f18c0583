"""``keras-effcnn``: train, evaluate, export, tune and stress-test recipes from the shell.

Each sub-command lives in its own module under ``keras_effcnn.commands`` and
exposes ``add_parser(subparsers)`` and ``run(args) -> int``; this file only
assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

COMMANDS = ("train", "evaluate", "export", "tune", "robustness")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-effcnn",
        description="Small, fast, robust CNNs for Keras 3: train recipes, evaluate, export to TFLite/LiteRT.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"keras_effcnn.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"keras_effcnn.commands.{name}":
                raise
            continue
        sub_parser = module.add_parser(sub)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Bad input is the user's to fix: one line naming the problem, no traceback.
        print(f"keras-effcnn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

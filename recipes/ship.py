"""Copy a finished `keras-effcnn train` run into the package as shipped weights.

Usage:
    python recipes/ship.py runs/mnist_1500-seed0 mnist_1500 [--log runs/mnist_1500-seed0.log]

A seed folder of ``benchmarks/time_to_accuracy.py`` (``runs/tta/mnist_1500/seed0``)
holds the same two files and ships the same way.

Writes ``keras_effcnn/weights/<name>.weights.h5`` (the final epoch's weights, never a
selected checkpoint), ``<name>.json`` (the run's results.json: recipe, command,
seed, commit, final-epoch test metrics, per-epoch timeline, wall time) and, with
``--log``, ``<name>.log`` (the training log with progress-bar redraws collapsed
to one line per epoch).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[1] / "keras_effcnn" / "weights"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def clean_log(text: str) -> str:
    """Keeps the last redraw of every progress-bar line and drops terminal colours."""
    lines = [_ANSI.sub("", line.split("\r")[-1]).replace("\b", "") for line in text.split("\n")]
    return "\n".join(line for line in lines if line.strip()) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("name")
    p.add_argument("--log", default=None)
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    WEIGHTS.mkdir(exist_ok=True)
    shutil.copyfile(run / "model.weights.h5", WEIGHTS / f"{args.name}.weights.h5")
    results = json.loads((run / "results.json").read_text())
    (WEIGHTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.log:
        # newline="" keeps the progress bar's carriage returns, which clean_log collapses.
        with open(args.log, newline="", errors="replace") as f:
            (WEIGHTS / f"{args.name}.log").write_text(clean_log(f.read()))
    print(f"shipped {args.name}: final-epoch test accuracy {results['test']['accuracy']:.4f}, "
          f"{results['params']['trainable']:,} params")
    return 0


if __name__ == "__main__":
    sys.exit(main())

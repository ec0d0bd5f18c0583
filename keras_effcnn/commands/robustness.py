"""``keras-effcnn robustness MODEL``: accuracy under corruptions and shift consistency.

Writes ``robustness.json``, ``robustness.md`` and ``robustness.png`` to ``--out``
and prints the markdown tables. See :mod:`keras_effcnn.robustness` for the
corruptions, their severities and the shift-consistency protocol.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from keras_effcnn import presets
from keras_effcnn.commands import WEIGHTS_HELP, add_data_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    from keras_effcnn.robustness import CORRUPTIONS, SHIFT_MODES

    p = subparsers.add_parser(
        "robustness", help="accuracy under common corruptions and shift consistency",
        description="Evaluate a model on the first --n test images under Gaussian noise, blur, contrast and "
                    "brightness corruptions (Hendrycks & Dietterich 2019) and measure how often two random shifts "
                    "of an image get the same prediction (Zhang 2019). Writes robustness.json, robustness.md "
                    "and robustness.png to --out.")
    p.add_argument("model", help="a .keras file, or a recipe name / recipe .json with --weights")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--dataset", default=None, choices=sorted(presets.DATASETS),
                   help="test set (default: the recipe's, or guessed from the model's input shape)")
    p.add_argument("--n", type=int, default=2000, help="number of test images, from the start of the test set")
    p.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=CORRUPTIONS, metavar="NAME",
                   help=f"corruptions to apply (default: all of {', '.join(CORRUPTIONS)})")
    p.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3], help="severities 1..5 (default 1 2 3)")
    p.add_argument("--shifts", nargs="+", type=int, default=[1, 2, 4], help="maximum shifts in pixels (default 1 2 4)")
    p.add_argument("--shift-mode", default="circular", choices=SHIFT_MODES, help="how shifted images are filled")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the shift offsets")
    p.add_argument("--out", required=True, help="output folder")
    add_data_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from keras_effcnn import data
    from keras_effcnn.commands import guess_dataset, load_model
    from keras_effcnn.robustness import evaluate_robustness

    if args.n < 1:
        raise ValueError(f"--n must be >= 1; got {args.n}")
    model, dataset = load_model(args.model, args.weights)
    dataset = args.dataset or dataset or guess_dataset(model.input_shape[1:])
    _, (x_test, y_test) = data.load_arrays(dataset, args.data_dir, args.source)
    if args.n > len(x_test):
        raise ValueError(f"--n must be at most the {len(x_test)} {dataset} test images; got {args.n}")
    report = evaluate_robustness(model, x_test[:args.n], y_test[:args.n], corruptions=args.corruptions,
                                 severities=args.severities, shifts=args.shifts, shift_mode=args.shift_mode,
                                 seed=args.seed)
    paths = report.write(Path(args.out))
    print(report.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0

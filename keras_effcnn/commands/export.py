"""``keras-effcnn export MODEL_OR_RECIPE``: write a ``.tflite`` file, its labels and a report.

The model is a ``.keras`` file (loaded with ``safe_mode=True``) or a recipe
name / recipe ``.json`` with ``--weights``. Int8 calibration draws
``--num-calibration`` random images from the real training set; unless
``--no-eval``, the file is then evaluated on the whole real test set against
the Keras model (accuracy of both, the drop in percentage points, top-1
agreement, single-thread latency, size). An int8 file is also run under
TensorFlow Lite Micro on held-out training images (agreement with LiteRT,
accuracy, arena size). The report is printed and written as
``<stem>.report.json`` and ``<stem>.report.md`` beside the file.

``--target micro`` also writes the file as a C array (``<stem>.cc`` /
``<stem>.h``, 16-byte aligned, with the arena size constant and the
``MicroMutableOpResolver`` registration of its ops) and defaults to int8
input/output.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from keras_effcnn.commands import WEIGHTS_HELP, add_data_args, class_names, guess_dataset, load_model


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export to TFLite/LiteRT (builtin ops only) and evaluate the file",
        description="Export a .keras model or a recipe's weights to a .tflite file with TFLite builtin ops only, "
        "write <stem>.labels.txt beside it, evaluate it on the real test set and write "
        "<stem>.report.json / <stem>.report.md.")
    p.add_argument("model", metavar="MODEL_OR_RECIPE",
                   help="a .keras file, or a recipe name / recipe .json (then --weights is required)")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--quantize", default="int8", choices=("none", "float16", "dynamic", "int8"),
                   help="none: float32; float16: half-size weights; dynamic: int8 weights, float activations; "
                   "int8: full integer, calibrated on training images (default: int8)")
    p.add_argument("--target", default="android", choices=("android", "micro"),
                   help="android: the .tflite file; micro: also a C array (.cc/.h) with the arena size and "
                   "op resolver, int8 I/O by default (default: android)")
    p.add_argument("--int8-io", default=None, choices=("int8", "uint8"),
                   help="with --quantize int8: integer input/output tensors "
                   "(default: float32 I/O for android, int8 for micro)")
    p.add_argument("--softmax", action="store_true",
                   help="end the file with a softmax: it outputs probabilities instead of logits")
    p.add_argument("--micro-eval", action="store_true",
                   help="also evaluate the file under TensorFlow Lite Micro on the test images (slow: one "
                   "image per invoke) and report its accuracy and top-1 agreement with LiteRT")
    p.add_argument("--no-micro-check", action="store_true",
                   help="skip running the int8 file under TensorFlow Lite Micro (for a LiteRT-only model)")
    p.add_argument("--out", default=None,
                   help="the .tflite file (default: <model stem or recipe>_<quantize>.tflite)")
    p.add_argument("--dataset", default=None, choices=("mnist", "fashion_mnist", "cifar10"),
                   help="dataset for calibration and evaluation (default: the recipe's, or guessed from the input shape)")
    p.add_argument("--num-calibration", type=int, default=200,
                   help="training images used to calibrate int8 ranges (default: 200)")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation")
    p.add_argument("--eval-images", type=int, default=None,
                   help="evaluate on the first N test images only (default: the whole test set)")
    p.add_argument("--latency-runs", type=int, default=100,
                   help="single-image invokes timed for the median latency (default: 100)")
    add_data_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from keras_effcnn import data, export

    model, dataset = load_model(args.model, args.weights)
    dataset = args.dataset or dataset or guess_dataset(tuple(model.input_shape[1:]))
    quantize = None if args.quantize == "none" else args.quantize
    out = Path(args.out or f"{_stem(args.model)}_{args.quantize}.tflite")

    if args.eval_images is not None and args.eval_images < 1:
        raise ValueError(f"--eval-images must be >= 1; got {args.eval_images}")
    need_data = quantize == "int8" or not args.no_eval
    int8_io = args.int8_io
    if args.target == "micro":
        if quantize != "int8":
            raise ValueError(f"--target micro needs --quantize int8 (TFLM runs integer kernels); got {args.quantize}")
        int8_io = int8_io or "int8"
    if need_data:
        (x_train, y_train), (x_test, y_test) = data.load_arrays(dataset, args.data_dir, source=args.source)
    try:
        report = export.to_tflite(
            model, out, quantize=quantize,
            representative_data=(x_train, y_train) if quantize == "int8" else None,
            num_calibration=args.num_calibration, int8_io=int8_io,
            labels=class_names(dataset), report=False, softmax=args.softmax,
            micro_check=not args.no_micro_check,
        )
    except export.ExportError as error:
        print(f"keras-effcnn export: {error}", file=sys.stderr)
        return 1
    if not args.no_eval:
        if args.eval_images is not None:
            x_test, y_test = x_test[: args.eval_images], y_test[: args.eval_images]
        if args.softmax:  # compare probabilities with probabilities
            import keras

            model = keras.Model(model.inputs, keras.layers.Softmax()(model.outputs[0]))
        evaluation = export.evaluate_tflite(out, x_test, y_test, keras_model=model,
                                            latency_runs=args.latency_runs, micro=args.micro_eval)
        report.evaluation = {"dataset": dataset, **evaluation, "command": _command_line(),
                             "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, latency on 1 thread"}
    written = [out, report.labels_path]
    if args.target == "micro":
        from keras_effcnn.export import micro

        arena = (report.micro or {}).get("arena_bytes")
        written += micro.write_c_array(out, arena_size=arena)
    json_path, md_path = report.write()
    print(report.to_markdown())
    print(f"wrote {', '.join(str(path) for path in written + [json_path, md_path])}")
    return 0


def _command_line() -> str:
    return " ".join(["keras-effcnn", *sys.argv[1:]]) if sys.argv[0].endswith("keras-effcnn") else " ".join(sys.argv)


def _stem(name: str) -> str:
    return Path(name).stem if Path(name).suffix in (".keras", ".json") else name

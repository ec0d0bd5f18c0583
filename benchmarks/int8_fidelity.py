"""Which LiteRT kernels TFLM matches, and whether more calibration images quantize cifar10_140k better.

1. For each shipped int8 file: top-1 agreement of TFLM with LiteRT's three kernel sets
   (``export.run_tflite(..., kernels=...)``) on the first test images (1,000 CIFAR-10,
   2,000 MNIST, as in ``tests/test_export_micro.py``), and the largest output difference.
2. For ``cifar10_140k``: int8 files calibrated on 200 and on 1,000 training images, each
   compared with the Keras model on a separate seeded sample of 5,000 training images (it
   may share ~1 % of its images with a calibration sample; int8 on the reference kernels and
   on XNNPACK). Numeric fidelity only: the test set is not used.
3. For ``cifar10_140k``: each quantized tensor's error against the float model run on the
   same int8 inputs (``tf.lite.experimental.QuantizationDebugger``, 100 training images),
   as RMSE in units of the tensor's quantization step. Pure rounding of a uniform error
   gives ``1/sqrt(12) = 0.289`` steps; a layer far above that is where int8 loses accuracy.
4. For ``cifar10_140k``: which half of int8 loses the accuracy. The same model converted with
   int16 activations and int8 weights (TFLite's 16x8 mode) against the int8 file, both
   compared with Keras image by image on the 5,000 training images of (2): if 16x8 agrees
   with Keras far more often, the activations' rounding (not the weights') is what
   quantization-aware training would have to absorb. Each file's size and whether TFLM runs
   it are recorded (16x8 is not an export option: TFLM stops at BlurPool's MIRROR_PAD).

Usage::

    python benchmarks/int8_fidelity.py --data-dir ../shared/data

Writes ``benchmarks/results/int8_fidelity.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_effcnn import data, export, provenance, recipes  # noqa: E402
from keras_effcnn.export import litert, micro  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "keras_effcnn" / "weights"


def kernel_agreement(data_dir) -> list[dict]:
    rows = []
    for name, dataset, count in (("cifar10_140k", "cifar10", 1_000), ("mnist_1500", "mnist", 2_000)):
        path = WEIGHTS / f"{name}_int8.tflite"
        (_, _), (x, _) = data.load_arrays(dataset, data_dir)
        images = x[:count]
        tflm = micro.run_micro(path, images)
        for kernels in litert.KERNELS:
            out = export.run_tflite(path, images, kernels=kernels)
            rows.append(dict(file=path.name, images=count, kernels=kernels,
                             agreement=float(np.mean(tflm.argmax(1) == out.argmax(1))),
                             max_abs_diff=float(np.abs(tflm - out).max())))
    return rows


def calibration_sizes(data_dir, sizes=(200, 1_000), n=5_000) -> list[dict]:
    model = recipes.cifar10_140k(weights="cifar10")
    (x, y), _ = data.load_arrays("cifar10", data_dir)
    # representative_images draws with seed 0; this seed picks a different sample.
    idx = np.random.default_rng(123).choice(len(x), n, replace=False)
    xs, ys = x[idx], y[idx].reshape(-1)
    keras_acc = float(np.mean(model.predict(xs.astype("float32") / 255.0, batch_size=500, verbose=0).argmax(1) == ys))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            calibration = data.representative_images("cifar10", data_dir, n=size)
            report = export.to_tflite(model, Path(tmp) / f"c{size}.tflite", quantize="int8",
                                      representative_data=calibration, report=False)
            acc = {k: float(np.mean(export.run_tflite(report.path, xs, kernels=k).argmax(1) == ys))
                   for k in ("reference", "xnnpack")}
            rows.append(dict(calibration_images=size, train_images=n, keras_accuracy=keras_acc,
                             int8_reference_accuracy=acc["reference"], int8_xnnpack_accuracy=acc["xnnpack"]))
    return rows


def _converter(model, calibration, tmp: Path, ops):
    """The exporter's route (SavedModel -> converter) with its full-integer settings and ``ops``."""
    from keras_effcnn.export import convert

    saved = convert.export_saved_model(convert.float32_model(model), tmp / "saved")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [ops]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    return converter


def activation_precision(data_dir, n: int = 5_000) -> list[dict]:
    model = recipes.cifar10_140k(weights="cifar10")
    (x, _), _ = data.load_arrays("cifar10", data_dir)
    xs = x[np.random.default_rng(123).choice(len(x), n, replace=False)]  # the sample of calibration_sizes
    keras_top1 = model.predict(xs.astype("float32") / 255.0, batch_size=500, verbose=0).argmax(1)
    calibration = data.representative_images("cifar10", data_dir, n=200)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, ops) in enumerate((
                ("int8 activations, int8 weights", tf.lite.OpsSet.TFLITE_BUILTINS_INT8),
                ("int16 activations, int8 weights (16x8)",
                 tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8))):
            work = Path(tmp) / str(i)
            work.mkdir()
            path = work / "model.tflite"
            path.write_bytes(_converter(model, calibration, work, ops).convert())
            top1 = export.run_tflite(path, xs, kernels="builtin").argmax(1)
            try:
                micro.run_micro(path, xs[:10])
                tflm = "runs"
            except Exception as err:  # noqa: BLE001 - recorded: which op TFLM refuses
                tflm = f"fails: {type(err).__name__}: {err}"
            rows.append(dict(mode=name, train_images=n, agreement_with_keras=float(np.mean(top1 == keras_top1)),
                             size_bytes=path.stat().st_size, tflm=tflm))
    return rows


def layer_errors(data_dir, n: int = 100) -> list[dict]:
    model = recipes.cifar10_140k(weights="cifar10")
    calibration = data.representative_images("cifar10", data_dir, n=200)
    (x, _), _ = data.load_arrays("cifar10", data_dir)
    debug = x[np.random.default_rng(7).choice(len(x), n, replace=False)].astype("float32") / 255.0
    with tempfile.TemporaryDirectory() as tmp:
        converter = _converter(model, calibration, Path(tmp), tf.lite.OpsSet.TFLITE_BUILTINS_INT8)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: ([image[None]] for image in debug))
        debugger.run()
        dump = Path(tmp) / "layers.csv"
        with open(dump, "w") as f:
            debugger.layer_statistics_dump(f)
        import csv

        with open(dump) as f:
            stats = list(csv.DictReader(f))
    return [dict(op=r["op_name"], tensor=r["tensor_name"].split(";")[-1], scale=float(r["scale"]),
                 rmse_steps=float(r["mean_squared_error"]) ** 0.5 / float(r["scale"]),
                 max_abs_steps=float(r["max_abs_error"]) / float(r["scale"])) for r in stats]


def to_markdown(doc: dict) -> str:
    lines = ["# int8 fidelity: TFLM against LiteRT's kernels; calibration size", "",
             f"Command: `{doc['command']}` at commit `{doc['commit']}`, {doc['date_utc']}.", "",
             "| file | test images | LiteRT kernels | TFLM top-1 agreement | max abs output difference |",
             "|---|---:|---|---:|---:|"]
    lines += [f"| `{r['file']}` | {r['images']:,} | {r['kernels']} | {r['agreement']:.4f} | {r['max_abs_diff']:.4f} |"
              for r in doc["kernels"]]
    lines += ["", "`cifar10_140k`, int8 against Keras on a separate seeded sample of training images "
              "(numeric fidelity; the test set is not used):", "",
              "| calibration images | training images | Keras | int8, reference kernels | int8, XNNPACK |",
              "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['calibration_images']:,} | {r['train_images']:,} | {r['keras_accuracy']:.4f} | "
              f"{r['int8_reference_accuracy']:.4f} | {r['int8_xnnpack_accuracy']:.4f} |" for r in doc["calibration"]]
    lines += ["", "`cifar10_140k`, which half of int8 costs agreement with Keras (top-1, the same 5,000 training "
              "images; LiteRT builtin kernels):", "",
              "| quantization | training images | top-1 agreement with Keras | file bytes | TFLM |", "|---|---:|---:|---:|---|"]
    lines += [f"| {r['mode']} | {r['train_images']:,} | {r['agreement_with_keras']:.4f} | {r['size_bytes']:,} | "
              f"{r['tflm']} |" for r in doc["precision"]]
    layers = doc["layers"]
    worst = max(layers, key=lambda r: r["rmse_steps"])
    lines += ["", "`cifar10_140k`, each quantized tensor's error against the float model fed the same int8 inputs, "
              "in quantization steps (100 training images; uniform rounding alone gives RMSE 0.289). "
              f"Largest RMSE: {worst['rmse_steps']:.3f} steps ({worst['op']} `{worst['tensor']}`); "
              f"median {float(np.median([r['rmse_steps'] for r in layers])):.3f}.", "",
              "| op | tensor | step | RMSE (steps) | max abs error (steps) |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['op']} | `{r['tensor']}` | {r['scale']:.4f} | {r['rmse_steps']:.3f} | {r['max_abs_steps']:.2f} |"
              for r in layers]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_EFFCNN_DATA_DIR"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    doc = dict(command="python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
               commit=provenance.git_commit(ROOT),
               date_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               kernels=kernel_agreement(args.data_dir), calibration=calibration_sizes(args.data_dir),
               precision=activation_precision(args.data_dir), layers=layer_errors(args.data_dir))
    out = Path(args.results)
    (out / "int8_fidelity.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "int8_fidelity.md").write_text(to_markdown(doc))
    print(to_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

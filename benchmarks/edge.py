"""Edge cost of the shipped int8 models next to the MLPerf Tiny image-classification reference.

For each shipped ``keras_effcnn/weights/*_int8.tflite`` file and for the MLPerf
Tiny (v1.x) image-classification reference network, ResNet-8 (filters 16-32-64,
~78K parameters, int8), exported the same way (``export.to_tflite(...,
quantize="int8")``, 200 CIFAR-10 training images for calibration, batch 1):

* flash: the ``.tflite`` file size (what a firmware stores);
* RAM: the TensorFlow Lite Micro tensor arena (``micro.arena_bytes``, TFLM's
  recording allocator on this 64-bit host: an upper bound for a 32-bit MCU);
* LiteRT latency: median single-image invoke, 1 thread, default XNNPACK delegate;
* TFLM latency: median single-image invoke of TFLM's reference kernels through
  its Python interpreter on this CPU (no CMSIS-NN / vendor kernels: a relative
  figure, not an MCU's);
* for the shipped files, the TFLM vs LiteRT top-1 agreement and accuracies on the
  whole test set, read from their reports (``keras-effcnn export ... --micro-eval``).

The ResNet-8 is **untrained** (random initialisation, its int8 ranges calibrated on
real CIFAR-10 images): size, arena and latency do not depend on the weight values;
it has no accuracy here.

Usage::

    python benchmarks/edge.py [--data-dir ../shared/data] [--runs 200]

Writes ``benchmarks/results/edge.json`` and ``edge.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_effcnn import data, export, provenance  # noqa: E402
from keras_effcnn.export import micro  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "keras_effcnn" / "weights"
RESULTS = ROOT / "benchmarks" / "results"
SHIPPED = (("mnist_1500", "mnist"), ("cifar10_140k", "cifar10"))


def resnet8(input_shape=(32, 32, 3), num_classes: int = 10) -> keras.Model:
    """The MLPerf Tiny image-classification reference: ResNet-8, three residual stacks of 16, 32, 64."""
    def conv_bn(x, filters, strides=1, relu=True):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", kernel_initializer="he_normal")(x)
        x = keras.layers.BatchNormalization()(x)
        return keras.layers.ReLU()(x) if relu else x

    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, 16)
    for filters, strides in ((16, 1), (32, 2), (64, 2)):
        y = conv_bn(conv_bn(x, filters, strides), filters, relu=False)
        if strides != 1:  # a strided 1x1 projection matches the shortcut's shape
            x = keras.layers.Conv2D(filters, 1, strides=strides, padding="same", kernel_initializer="he_normal")(x)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.AveragePooling2D(x.shape[1])(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs, name="resnet8_mlperf_tiny")


def measure(name: str, path: Path, params: int, x_test, runs: int, note: str) -> dict:
    row = {
        "model": name,
        "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name,
        "params": params,
        "flash_bytes": path.stat().st_size,
        "arena_bytes": micro.arena_bytes(path),
        "ops": export.model_ops(path),
        "litert_latency_ms": export.latency_ms(path, x_test[:runs], runs=runs, num_threads=1),
        "tflm_latency_ms": micro.latency_ms(path, x_test, runs=runs),
        "note": note,
    }
    report = path.with_name(path.stem + ".report.json")
    if report.exists():  # the full-test-set TFLM check, measured by `keras-effcnn export --micro-eval`
        evaluation = json.loads(report.read_text()).get("evaluation") or {}
        for key in ("num_images", "agreement_tflm", "accuracy_tflm", "accuracy", "keras_accuracy"):
            if key in evaluation:
                row[key] = evaluation[key]
    return row


def to_markdown(result: dict) -> str:
    lines = [
        "# Edge cost of the int8 models",
        "",
        f"Command: `{result['command']}` at commit `{result['commit']}`, {result['date']}.",
        f"Machine: {result['machine']}. {result['shared']}",
        "",
        "| model | params | flash (file) | TFLM arena (RAM) | LiteRT 1-thread latency | TFLM latency (this CPU) "
        "| TFLM / LiteRT top-1 agreement (accuracy) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["models"]:
        agreement = (f"{row['agreement_tflm']:.4f} on {row['num_images']:,} test images "
                     f"(TFLM {row['accuracy_tflm']:.4f}, Keras {row['keras_accuracy']:.4f})"
                     if "agreement_tflm" in row else "not measured")
        lines.append(
            f"| {row['model']} | {row['params']:,} | {row['flash_bytes'] / 1000:.1f} KB | "
            f"{row['arena_bytes'] / 1000:.1f} KB | {row['litert_latency_ms']:.3f} ms | "
            f"{row['tflm_latency_ms']:.2f} ms | {agreement} | {row['note']} |"
        )
    lines += [
        "",
        "Flash is the `.tflite` file (the TFLM runtime code is extra); the arena is TFLM's recorded "
        "total on this 64-bit host, an upper bound for a 32-bit MCU. Latencies are medians of "
        f"{result['runs']} single-image invokes; TFLM runs its portable reference kernels through "
        "its Python interpreter here, so its latency compares models, not MCUs.",
        "",
    ]
    return "\n".join(lines)


def _load_note(start: tuple[float, ...], end: tuple[float, ...]) -> str:
    """What the load averages say about the latencies (one thread each: idle means load < cores)."""
    loads = f"load average {', '.join(f'{v:.1f}' for v in start)} at start, {', '.join(f'{v:.1f}' for v in end)} at end"
    if max(start[0], end[0]) < (os.cpu_count() or 1):
        return f"Single-thread latencies with a core free ({loads})."
    return f"The cores were busy with other jobs ({loads}): the latencies are noisy upper bounds."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_EFFCNN_DATA_DIR"))
    parser.add_argument("--runs", type=int, default=200, help="timed single-image invokes per runtime")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    from keras_effcnn import recipes

    load_start = os.getloadavg()
    rows = []
    for name, dataset in SHIPPED:
        (_, _), (x_test, _) = data.load_arrays(dataset, args.data_dir)
        params = recipes.build(name).count_params()
        rows.append(measure(name, WEIGHTS / f"{name}_int8.tflite", params, x_test, args.runs,
                            f"shipped weights ({dataset})"))
        print(rows[-1], flush=True)
    (x_train, _), (x_test, _) = data.load_arrays("cifar10", args.data_dir)
    keras.utils.set_random_seed(0)
    reference = resnet8()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet8_int8.tflite"
        export.to_tflite(reference, path, quantize="int8", representative_data=x_train, report=False)
        rows.append(measure("ResNet-8 (MLPerf Tiny reference)", path, reference.count_params(), x_test, args.runs,
                            "untrained, calibrated on 200 CIFAR-10 images: size and speed only"))
    print(rows[-1], flush=True)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": provenance.git_commit(ROOT),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
                   f"Python {platform.python_version()}",
        "shared": _load_note(load_start, os.getloadavg()),
        "runs": args.runs,
        "models": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "edge.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "edge.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

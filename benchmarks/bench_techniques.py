"""Cost of the training techniques, as ratios measured in one run.

1. SAM overhead: the time of one ``SAMModel`` training step divided by the time of
   one plain ``keras.Model`` step, for a ~140K-parameter depthwise-separable CNN
   on 32x32x3 batches of 128 (two forward-backward passes make 2.0x the floor).
   Plain and SAM ``fit`` steps alternate so that load from other processes on
   the machine hits both alike; process CPU time (robust to other jobs on
   shared cores) and wall-clock time are both reported.
2. Augmentation headroom: images/s of the ``tf.data`` pipeline random
   crop+flip -> Cutout -> Mixup on real CIFAR-10 (uint8 in memory, scaled and
   one-hot encoded in the pipeline) divided by the images/s of the plain
   training step, per CPU-second and per wall-clock second; >= 5x means
   augmentation can never starve training.

Usage::

    python benchmarks/bench_techniques.py [--data-dir ../shared/data] [--rounds 8]

Writes ``benchmarks/results/techniques.json`` and ``techniques.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_effcnn import augment  # noqa: E402
from keras_effcnn.sam import SAMModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
# Process CPU time (all threads) barely moves when other jobs share the cores; wall time is what one waits.
CLOCKS = ("cpu", "wall")


def ds_cnn(num_classes: int = 10) -> keras.Model:
    """Stem conv + five depthwise-separable blocks + GAP head (~140K parameters)."""
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    for filters, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)):
        h = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(h)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
        h = keras.layers.Conv2D(filters, 1, use_bias=False)(h)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(h), name="ds_cnn")


def _compile(model: keras.Model) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["categorical_accuracy"],
        jit_compile=False,
    )
    return model


def _clocks() -> np.ndarray:
    return np.array([time.process_time(), time.perf_counter()])


def _time_steps(model: keras.Model, data: tf.data.Dataset, steps: int) -> np.ndarray:
    """(process CPU, wall) seconds per step of ``fit`` over an in-memory batch."""
    start = _clocks()
    model.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    return (_clocks() - start) / steps


def bench_sam(x, y, rounds: int, steps: int) -> dict:
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    plain = _compile(ds_cnn())
    sam = _compile(SAMModel.from_model(ds_cnn(), rho=0.05))
    for model in (plain, sam):  # trace and warm up
        _time_steps(model, data, 3)
    plain_t, sam_t = [], []
    for _ in range(rounds):
        plain_t.append(_time_steps(plain, data, steps))
        sam_t.append(_time_steps(sam, data, steps))
    plain_t, sam_t = np.array(plain_t), np.array(sam_t)
    result = {
        "trainable_params": int(sum(np.prod(v.shape) for v in plain.trainable_variables)),
        "rounds": rounds,
        "steps_per_round": steps,
    }
    for i, clock in enumerate(CLOCKS):
        ratios = sam_t[:, i] / plain_t[:, i]
        result[clock] = {
            "plain_step_ms_min": 1e3 * float(plain_t[:, i].min()),
            "plain_step_ms_median": 1e3 * float(np.median(plain_t[:, i])),
            "sam_step_ms_min": 1e3 * float(sam_t[:, i].min()),
            "sam_step_ms_median": 1e3 * float(np.median(sam_t[:, i])),
            "sam_over_plain_median_of_rounds": float(np.median(ratios)),
            "sam_over_plain_of_minima": float(sam_t[:, i].min() / plain_t[:, i].min()),
            "sam_over_plain_rounds": ratios.tolist(),
        }
    return result


def bench_augmentation(x_uint8, labels, batches: int) -> dict:
    ds = tf.data.Dataset.from_tensor_slices((x_uint8, labels)).repeat().batch(BATCH, drop_remainder=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, tf.one_hot(y, 10)))
    ds = augment.apply(
        ds, augment.random_crop_flip(4, seed=1), augment.cutout(16, seed=2), augment.mixup(0.2, seed=3)
    )
    options = tf.data.Options()
    options.autotune.enabled = False  # autotune stalls on this shared machine
    ds = ds.with_options(options).prefetch(2)
    iterator = iter(ds)
    for _ in range(5):
        next(iterator)
    start = _clocks()
    for _ in range(batches):
        images, _ = next(iterator)
    float(tf.reduce_sum(images))  # make sure the last batch was materialized
    elapsed = _clocks() - start
    return {"batches": batches, **{clock: batches * BATCH / float(elapsed[i]) for i, clock in enumerate(CLOCKS)}}


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "platform": platform.platform(),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_EFFCNN_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1, help="train steps per timed round")
    parser.add_argument("--aug-batches", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    info = machine()
    keras.utils.set_random_seed(0)
    with np.load(Path(args.data_dir) / "cifar10.npz") as data:
        x_train, y_train = data["x_train"], data["y_train"].reshape(-1).astype("int32")
    x = x_train[:BATCH].astype("float32") / 255.0
    y = np.eye(10, dtype="float32")[y_train[:BATCH]]

    began = time.time()
    sam = bench_sam(x, y, args.rounds, args.steps)
    aug = bench_augmentation(x_train, y_train, args.aug_batches)
    aug_summary = {
        "batches": aug["batches"],
        "pipeline": "uint8->float/255, one_hot, random_crop_flip(4), cutout(16), mixup(0.2); sequential map, prefetch(2)",
    }
    for clock in CLOCKS:
        # Training throughput from the fastest plain step: a conservative (high) denominator.
        train = BATCH / (sam[clock]["plain_step_ms_min"] / 1e3)
        aug_summary[clock] = {
            "augmentation_images_per_s": aug[clock],
            "plain_training_images_per_s": train,
            "augmentation_over_training": aug[clock] / train,
        }
    result = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "batch_size": BATCH,
        "sam": sam,
        "augmentation": aug_summary,
        "wall_s": time.time() - began,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "techniques.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "techniques.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


def to_markdown(r: dict) -> str:
    s, a, m = r["sam"], r["augmentation"], r["machine"]
    rows = []
    for clock, label in (("cpu", "process CPU time"), ("wall", "wall-clock time")):
        sc, ac = s[clock], a[clock]
        rows += [
            f"| *{label}* | | |",
            f"| SAM step / plain step, median of per-round ratios | **{sc['sam_over_plain_median_of_rounds']:.2f}x** | <= 2.1x |",
            f"| SAM step / plain step, ratio of fastest steps | {sc['sam_over_plain_of_minima']:.2f}x | <= 2.1x |",
            f"| plain step, fastest / median | {sc['plain_step_ms_min']:.0f} ms / {sc['plain_step_ms_median']:.0f} ms | |",
            f"| SAM step, fastest / median | {sc['sam_step_ms_min']:.0f} ms / {sc['sam_step_ms_median']:.0f} ms | |",
            f"| augmentation pipeline | {ac['augmentation_images_per_s']:,.0f} images/s | |",
            f"| plain training (fastest step) | {ac['plain_training_images_per_s']:,.0f} images/s | |",
            f"| augmentation / training throughput | **{ac['augmentation_over_training']:.1f}x** | >= 5x |",
        ]
    per_round = "; ".join(
        f"{clock}: " + ", ".join(f"{v:.2f}" for v in s[clock]["sam_over_plain_rounds"]) for clock in CLOCKS
    )
    table = "\n".join(rows)
    return f"""# Technique costs

`{r["command"]}` on {r["date_utc"]}: {m["cpu"]}, {m["logical_cpus"]} logical CPUs shared with other jobs
(load average at start {", ".join(f"{v:.1f}" for v in m["load_average_at_start"])}), TensorFlow {m["tensorflow"]},
Keras {m["keras"]}, Python {m["python"]}, `jit_compile=False`. Wall time {r["wall_s"]:.0f} s.

Model: {s["trainable_params"]:,}-parameter depthwise-separable CNN, batch {r["batch_size"]} of 32x32x3, SGD
momentum 0.9; SAM with rho=0.05 (two forward-backward passes make 2.0x the floor). Plain and SAM
`fit` steps over one in-memory batch alternate in {s["rounds"]} rounds of {s["steps_per_round"]} step(s), so
load from other jobs hits both alike. Process CPU time (all threads of this process) is barely
affected by other jobs on the shared cores; wall-clock time includes waiting for them and is noisy.
Augmentation: {a["pipeline"]}, {a["batches"]} batches of real CIFAR-10 (50,000 images held as uint8).

| measure | value | target |
|---|---|---|
{table}

Per-round SAM/plain ratios: {per_round}.
"""


if __name__ == "__main__":
    main()

"""Training throughput of the zoo, its layers and two plain-Keras references, measured in one run.

For every zoo model (``keras_effcnn.models.list_models()``) and two references —
the paper's MNIST net written with stock ``SeparableConv2D``/``Conv2D``/
``BatchNormalization`` and the MLPerf Tiny image-classification ResNet-8
(16-32-64) — the script times the compiled Keras train step (``train_on_batch``
in graph mode, the recipe's optimizer and loss, no ``jit_compile``) on a few
cached in-memory batches at the recipe's batch size, and reports

* training images/s, per wall-clock second and per process CPU-second (all
  threads of this process; other jobs on shared cores barely move it, so
  CPU-seconds divided by the cores used is the noise-robust figure);
* achieved GMAC/s, counting forward + backward as 3x the forward MACs of
  ``keras_effcnn.models.count_macs``;
* the fraction of the machine's float32 matmul peak (NumPy ``A @ B``, measured
  in the same run): ``2 * GMAC / peak GFLOP``, both per process CPU-second (the
  wall-clock figures are in the JSON file);
* the flagship / reference ratios (``effcnn_mnist`` / paper MNIST net,
  ``effcnn_cifar10`` / ResNet-8), the median of per-round ratios.

Each package layer is timed forward + backward (gradients of the input and the
weights) against its nearest stock-Keras equivalent at the shape where the
CIFAR-10 flagship uses it. The candidates of a group alternate within every
round, so load from other jobs hits all of them alike; medians over rounds.

Usage::

    nice python benchmarks/throughput.py            # ~1.5 min on 2 cores
    nice python benchmarks/throughput.py --quick    # ~1 min, fewer rounds

Writes ``benchmarks/results/throughput.json`` and ``throughput.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bench_techniques  # noqa: E402  (the sibling script, on sys.path when run as a script)

from keras_effcnn import models, provenance, recipes  # noqa: E402
from keras_effcnn.layers import BlurPool2D, ConvBNAct, DepthwiseSeparableBlock, SqueezeExcite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLOCKS = ("wall", "cpu")

# The recipe each zoo model trains with (its batch size, optimizer and loss).
MODEL_RECIPES = {
    "effcnn_mnist": "mnist_1500",
    "effcnn_cifar10": "cifar10_140k",
    "paper_mnist": "mnist_phase2_depthwise_gap",
    "paper_cifar10": "paper_cifar10",
}
# flagship -> (reference, the recipe whose batch size both run at)
FLAGSHIPS = {
    "effcnn_mnist": ("reference_mnist_separable", "mnist_1500"),
    "effcnn_cifar10": ("reference_resnet8", "cifar10_140k"),
}
# The fast recipes train their own variant of the flagship (model options, batch size): each
# is timed against its reference at the fast recipe's batch.
FAST_RECIPES = {
    "mnist_1500_fast": "reference_mnist_separable",
    "cifar10_140k_fast": "reference_resnet8",
}


# ----------------------------------------------------------------------------- references


def reference_mnist_separable(num_classes: int = 10) -> keras.Model:
    """The paper's 1.5K MNIST net in stock Keras: SeparableConv2D, 1x1 transitions, conv -> ReLU -> BN."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Normalization(mean=[0.1307], variance=[0.3081**2])(inputs)

    def unit(x, filters, separable=True, padding="valid"):
        conv = keras.layers.SeparableConv2D if separable else keras.layers.Conv2D
        x = conv(filters, 3, padding=padding, use_bias=False)(x)
        return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(keras.layers.ReLU()(x))

    x = unit(x, 8, separable=False)
    x = unit(x, 12)
    x = keras.layers.MaxPooling2D(2)(keras.layers.Conv2D(8, 1, use_bias=False)(x))
    x = unit(x, 12)
    x = unit(x, 16)
    x = keras.layers.MaxPooling2D(2)(keras.layers.Conv2D(12, 1, use_bias=False)(x))
    x = unit(x, 15, padding="same")
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, use_bias=False)(x)
    return keras.Model(inputs, outputs, name="reference_mnist_separable")


def reference_resnet8(num_classes: int = 10) -> keras.Model:
    """MLPerf Tiny image classification ResNet-8 (16-32-64 residual stacks, 8x8 average pool), plain Keras."""
    reg = keras.regularizers.L2(1e-4)
    conv = dict(padding="same", kernel_initializer="he_normal", kernel_regularizer=reg)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, **conv)(inputs)
    x = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(x))
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        y = keras.layers.Conv2D(filters, 3, strides=stride, **conv)(x)
        y = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(y))
        y = keras.layers.BatchNormalization()(keras.layers.Conv2D(filters, 3, **conv)(y))
        if stride > 1:
            x = keras.layers.Conv2D(filters, 1, strides=stride, **conv)(x)
        x = keras.layers.Activation("relu")(keras.layers.Add()([x, y]))
    x = keras.layers.Flatten()(keras.layers.AveragePooling2D(8)(x))
    outputs = keras.layers.Dense(num_classes, kernel_initializer="he_normal")(x)
    return keras.Model(inputs, outputs, name="reference_resnet8")


REFERENCES = {"reference_mnist_separable": reference_mnist_separable, "reference_resnet8": reference_resnet8}


# ----------------------------------------------------------------------------- timing


def _clocks() -> np.ndarray:
    return np.array([time.perf_counter(), time.process_time()])


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """Best-of NumPy float32 ``n x n`` matmul GFLOP per wall second and per process CPU-second (2 n^3 flops)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, n, n), dtype=np.float32)
    a @ b
    best = np.full(2, np.inf)
    for _ in range(repeats):
        start = _clocks()
        a @ b
        best = np.minimum(best, _clocks() - start)
    return {clock: 2 * n**3 / float(best[i]) / 1e9 for i, clock in enumerate(CLOCKS)}


def interleaved(candidates: dict[str, Callable[[], None]], rounds: int, steps: int) -> dict[str, np.ndarray]:
    """``{name: (rounds, 2) seconds per step (wall, cpu)}``; the candidates alternate within each round."""
    for run in candidates.values():  # trace and warm up
        for _ in range(2):
            run()
    times = {name: [] for name in candidates}
    for r in range(rounds):
        # Rotate the order so that no candidate always runs right after the same one.
        names = list(candidates)
        names = names[r % len(names):] + names[: r % len(names)]
        for name in names:
            start = _clocks()
            for _ in range(steps):
                candidates[name]()
            times[name].append((_clocks() - start) / steps)
    return {name: np.array(t) for name, t in times.items()}


def _batches(input_shape, batch: int, num_classes: int, count: int = 3):
    rng = np.random.default_rng(1)
    xs = [tf.constant(rng.uniform(0, 1, (batch, *input_shape)).astype("float32")) for _ in range(count)]
    ys = [tf.constant(np.eye(num_classes, dtype="float32")[rng.integers(0, num_classes, batch)]) for _ in range(count)]
    return xs, ys


def train_step_runner(model: keras.Model, recipe_name: str,
                      batch_size: int | None = None) -> tuple[Callable[[], None], int]:
    """A ``train_on_batch`` closure over cached batches, compiled as the recipe compiles; and its batch size."""
    recipe = recipes.get_recipe(recipe_name)
    if batch_size is not None:
        recipe = recipe.replace(batch_size=batch_size)
    recipes.compile_model(model, recipe, steps_per_epoch=100)
    xs, ys = _batches(model.input_shape[1:], recipe.batch_size, recipe.num_classes)
    state = {"i": 0}

    def run() -> None:
        i = state["i"] = (state["i"] + 1) % len(xs)
        model.train_on_batch(xs[i], ys[i])

    return run, recipe.batch_size


def fwd_bwd_runner(layer: keras.layers.Layer | Callable, shape: tuple[int, ...]) -> tuple[Callable[[], None], int]:
    """Forward + backward (input and weight gradients) of ``layer`` on a cached batch; and its MACs per image."""
    inputs = keras.Input(shape[1:])
    model = keras.Model(inputs, layer(inputs))
    x = tf.constant(np.random.default_rng(2).standard_normal(shape).astype("float32"))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, *model.trainable_variables])

    def run() -> None:
        grads = step(x)
        float(tf.reduce_sum(grads[0]))

    return run, models.count_macs(model)


def _summarize(times: np.ndarray, images_per_step: int, macs: int, peak: dict[str, float]) -> dict:
    median = np.median(times, axis=0)
    out = {"rounds": len(times)}
    for i, clock in enumerate(CLOCKS):
        ips = images_per_step / median[i]
        out[clock] = {
            "step_ms_median": 1e3 * float(median[i]),
            "step_ms_min": 1e3 * float(times[:, i].min()),
            "images_per_s": float(ips),
            "gmac_per_s": float(3 * macs * ips / 1e9),
            # Per wall second against the matmul's per wall second, per CPU-second against per CPU-second.
            "fraction_of_matmul_peak": float(2 * 3 * macs * ips / 1e9 / peak[clock]),
        }
    return out


# ----------------------------------------------------------------------------- the benchmarks


def bench_models(names: list[str], rounds: int, steps: int, peak: dict[str, float]) -> dict:
    """Every zoo model at its recipe's batch, interleaved with the references (flagships first)."""
    runners, info = {}, {}
    for name in names:
        keras.utils.set_random_seed(0)
        if name in REFERENCES:
            model = REFERENCES[name]()
            recipe = next(r for ref, r in FLAGSHIPS.values() if ref == name)
        else:
            model = models.build(name)
            recipe = MODEL_RECIPES.get(name, "mnist_1500" if models.get_spec(name).dataset == "mnist" else "cifar10_140k")
        runners[name], batch = train_step_runner(model, recipe)
        info[name] = {"recipe": recipe, "batch_size": batch, "macs": models.count_macs(model),
                      **models.count_params(model)}
    times = interleaved(runners, rounds, steps)
    rows = {name: {**info[name], **_summarize(times[name], info[name]["batch_size"], info[name]["macs"], peak)}
            for name in names}
    ratios = {f"{flagship} / {reference}": speedup(times, flagship, reference)
              for flagship, (reference, _) in FLAGSHIPS.items() if flagship in times and reference in times}
    return {"models": rows, "ratios": ratios}


def speedup(times: dict[str, np.ndarray], net: str, reference: str) -> dict:
    """Per-round ratio of the reference's step time to ``net``'s (``net``'s speed-up), median per clock."""
    per_round = times[reference] / times[net]
    return {clock: {"median": float(np.median(per_round[:, i])), "rounds": per_round[:, i].round(3).tolist()}
            for i, clock in enumerate(CLOCKS)}


def bench_fast_recipes(rounds: int, steps: int, peak: dict[str, float]) -> dict:
    """Each fast recipe's net (its model options) against its reference, both at the recipe's batch."""
    runners, info, pairs = {}, {}, {}
    for recipe, reference in FAST_RECIPES.items():
        keras.utils.set_random_seed(0)
        ref_key = f"{reference} @ {recipe}"
        for key, model in ((recipe, recipes.build(recipe)), (ref_key, REFERENCES[reference]())):
            runners[key], batch = train_step_runner(model, recipe)
            info[key] = {"recipe": recipe, "batch_size": batch, "macs": models.count_macs(model),
                         **models.count_params(model)}
        pairs[f"{recipe} / {reference}"] = (recipe, ref_key)
    times = interleaved(runners, rounds, steps)
    rows = {key: {**info[key], **_summarize(times[key], info[key]["batch_size"], info[key]["macs"], peak)}
            for key in runners}
    ratios = {pair: speedup(times, net, ref) for pair, (net, ref) in pairs.items()}
    return {"models": rows, "ratios": ratios}


def layer_groups() -> dict[str, tuple[tuple[int, ...], dict[str, Callable[[], object]]]]:
    """Package layer vs stock-Keras equivalents, at the shapes where effcnn_cifar10 uses them."""

    def seq(*layers):
        return keras.Sequential(list(layers))

    def bn_relu():
        return [keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5), keras.layers.ReLU()]

    return {
        **{f"downsample {h}x{w}x{c}": ((128, h, w, c), {
            "BlurPool2D(3, 2)": lambda: BlurPool2D(3, 2),
            "MaxPooling2D(2, s1, same) + BlurPool2D(3, 2)":
                lambda: seq(keras.layers.MaxPooling2D(2, 1, padding="same"), BlurPool2D(3, 2)),
            "AveragePooling2D(2)": lambda: keras.layers.AveragePooling2D(2),
            "MaxPooling2D(2)": lambda: keras.layers.MaxPooling2D(2),
        }) for h, w, c in ((32, 32, 32), (16, 16, 64))},
        "depthwise-separable 16x16x64": ((128, 16, 16, 64), {
            "DepthwiseSeparableBlock(64)": lambda: DepthwiseSeparableBlock(64),
            "SeparableConv2D(64) + BN + ReLU":
                lambda: seq(keras.layers.SeparableConv2D(64, 3, padding="same", use_bias=False), *bn_relu()),
            "DepthwiseConv2D + BN + ReLU + Conv2D 1x1 + BN + ReLU":
                lambda: seq(keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False), *bn_relu(),
                            keras.layers.Conv2D(64, 1, use_bias=False), *bn_relu()),
        }),
        "squeeze-excite 8x8x128": ((128, 8, 8, 128), {
            "SqueezeExcite(0.0625)": lambda: SqueezeExcite(0.0625),
            "nothing (identity)": lambda: keras.layers.Identity(),
        }),
        "conv-bn-act 16x16x32->64": ((128, 16, 16, 32), {
            "ConvBNAct(64, 3)": lambda: ConvBNAct(64, 3),
            "Conv2D(64, 3) + BN + ReLU": lambda: seq(keras.layers.Conv2D(64, 3, padding="same", use_bias=False),
                                                    *bn_relu()),
        }),
    }


def bench_layers(rounds: int, steps: int, peak: dict[str, float]) -> dict:
    out = {}
    for group, (shape, makers) in layer_groups().items():
        runners, macs = {}, {}
        for name, make in makers.items():
            runners[name], macs[name] = fwd_bwd_runner(make(), shape)
        times = interleaved(runners, rounds, steps)
        first = next(iter(makers))
        out[group] = {"shape": list(shape), "candidates": {
            name: {"macs_per_image": macs[name], **_summarize(times[name], shape[0], macs[name], peak),
                   f"time_over_{first}": float(np.median(times[name][:, 1] / times[first][:, 1]))}
            for name in makers}}
    return out


# ----------------------------------------------------------------------------- reporting


def machine() -> dict:
    """``bench_techniques.machine()`` plus NumPy and TensorFlow's thread settings."""
    info = bench_techniques.machine()
    info.pop("load_average_at_start")  # recorded at start and end by main()
    return {**info, "numpy": np.__version__,
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}


MODEL_TABLE_HEAD = ("| model | recipe batch | params | MACs | img/s (wall) | img/CPU-s | GMAC/CPU-s | % matmul peak (CPU) |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|")


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Training throughput",
        "",
        f"`{r['command']}` on {r['date_utc']}, commit `{r['commit']}`: {m['cpu']}, {m['logical_cpus']} logical CPUs "
        f"(load average {', '.join(f'{v:.1f}' for v in r['load_average_start'])} at start, "
        f"{', '.join(f'{v:.1f}' for v in r['load_average_end'])} at end), TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}, graph mode without `jit_compile`. Run: {r['wall_s']:.0f} s wall, "
        f"{r['cpu_s']:.0f} s process CPU. NumPy float32 1024x1024 matmul measured at the start of the run (the "
        f"peak below): **{r['matmul_peak_gflops']['cpu']:.1f} GFLOP per CPU-second**, "
        f"{r['matmul_peak_gflops']['wall']:.1f} GFLOP/s wall (at the end: {r['matmul_peak_gflops_end']['cpu']:.1f} "
        f"and {r['matmul_peak_gflops_end']['wall']:.1f}).",
        "",
        "Images/s per wall second and per process CPU-second (all threads; other jobs on the shared cores barely "
        "move it). GMAC/s counts forward + backward as 3x the forward MACs; % peak = 2 x GMAC per CPU-second / matmul "
        "GFLOP per CPU-second (both clocks count the same cores, so the load of other jobs cancels). "
        f"Medians of {r['rounds']} interleaved rounds of {r['steps']} train steps on cached batches.",
        "",
        "## Models (`train_on_batch`, the recipe's optimizer and loss)",
        "",
        *MODEL_TABLE_HEAD,
    ]
    def model_rows(block: dict, ratio_title: str) -> list[str]:
        out = []
        for name, row in block["models"].items():
            w, c = row["wall"], row["cpu"]
            out.append(f"| `{name}` | {row['batch_size']} | {row['trainable']:,} | {row['macs']:,} | "
                       f"{w['images_per_s']:,.0f} | {c['images_per_s']:,.0f} | {c['gmac_per_s']:.2f} | "
                       f"{100 * c['fraction_of_matmul_peak']:.1f} % |")
        out += ["", f"| {ratio_title} (speed-up, median of per-round ratios) | wall | CPU | goal |", "|---|---:|---:|---:|"]
        for pair, ratio in block["ratios"].items():
            out.append(f"| {pair} | **{ratio['wall']['median']:.2f}x** | {ratio['cpu']['median']:.2f}x | >= 1.5x |")
        return out

    lines += model_rows(r["models"], "flagship / reference")
    if r.get("fast_recipes"):
        lines += ["", "## The fast recipes' nets (their model options) against the references at the recipe's batch",
                  "", *MODEL_TABLE_HEAD]
        lines += model_rows(r["fast_recipes"], "fast recipe's net / reference")
    lines += ["", "## Layers, forward + backward", ""]
    for group, g in r["layers"].items():
        first = next(iter(g["candidates"]))
        lines += [f"**{group}** (batch {g['shape'][0]}, input {tuple(g['shape'][1:])})", "",
                  f"| layer | ms (wall) | ms (CPU) | time / {first} (CPU) | MACs/image | GMAC/CPU-s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, c in g["candidates"].items():
            lines.append(f"| {name} | {c['wall']['step_ms_median']:.2f} | {c['cpu']['step_ms_median']:.2f} | "
                         f"{c[f'time_over_{first}']:.2f} | {c['macs_per_image']:,} | {c['cpu']['gmac_per_s']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (~1 min)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 3)")
    parser.add_argument("--steps", type=int, default=None, help="train steps per round (default 2, quick 1)")
    parser.add_argument("--models", nargs="*", default=None,
                        help="zoo models and references to time (default: the zoo and both references)")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer comparison")
    parser.add_argument("--no-fast-recipes", action="store_true", help="skip the fast recipes' nets")
    parser.add_argument("--intra-op-threads", type=int, default=0, help="tf.config.threading (0: TF's default)")
    parser.add_argument("--inter-op-threads", type=int, default=0, help="tf.config.threading (0: TF's default)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                        help="folder for throughput.json / .md ('' to only print)")
    parser.add_argument("--json", action="store_true", help="print the JSON result as the last line")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    steps = args.steps or (1 if args.quick else 2)
    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    names = args.models if args.models is not None else [*models.list_models(), *REFERENCES]

    load_start, start = os.getloadavg(), _clocks()
    peak = matmul_peak_gflops()
    result = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": provenance.git_commit(ROOT),
        "machine": machine(),
        "rounds": rounds,
        "steps": steps,
        "matmul_peak_gflops_start": peak,
        "models": bench_models(names, rounds, steps, peak),
        "fast_recipes": {} if args.no_fast_recipes else bench_fast_recipes(rounds, steps, peak),
        "layers": {} if args.no_layers else bench_layers(rounds, steps, peak),
    }
    # The fractions of peak use the start figure; the end figure shows how much the load moved it.
    result["matmul_peak_gflops_end"] = matmul_peak_gflops()
    result["matmul_peak_gflops"] = peak
    elapsed = _clocks() - start
    result.update(load_average_start=list(load_start), load_average_end=list(os.getloadavg()),
                  wall_s=float(elapsed[0]), cpu_s=float(elapsed[1]))
    text = to_markdown(result)
    print(json.dumps(result) if args.json else text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "throughput.md").write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()

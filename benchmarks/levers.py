"""What each speed lever buys the flagship nets' training step, measured in one run (the airbench way).

Every lever is timed against the package with that lever alone switched off
(the "before" variant, rebuilt in the same process; "all exact levers" switches
off both), interleaved round by round with the "after" variant (the package), on the compiled Keras train step at the recipe's batch size
(see ``throughput.py``, whose timing functions this script reuses). Levers:

* ``fused_bn``: ``FusedBatchNormalization`` (TensorFlow's fused kernel) instead
  of ``keras.layers.BatchNormalization`` in ``ConvBNAct`` /
  ``DepthwiseSeparableBlock`` — exact to float rounding;
* ``bn_by_channels``: ``FusedBatchNormalization`` runs the fused kernel only
  where it is fast on CPU (channels a multiple of 4) and Keras' ops elsewhere
  (effcnn_mnist's 14-channel layers): exact to float rounding; the per-channel
  table below is what the rule comes from;
* ``trimmed_blur_pad``: ``BlurPool2D`` pads only the pixels its strided windows
  read (none after the image for filter 3, stride 2, even sizes) — exact;
* ``zero_blur_pad`` (the fast recipes): ``BlurPool2D`` pads its border with zeros
  instead of reflecting it (``blur_padding="zero"``): the same blur inside the
  image, different values on the first row and column, so a recipe choice
  checked for accuracy and robustness, not an exact lever;
* ``no_blurpool`` (not adopted, for scale): plain max-pool instead of BlurMaxPool;
* ``batch``: images/s at larger batches (a recipe change: learning rate and
  accuracy are not validated by this script);
* ``threads``: TensorFlow intra/inter-op thread counts (one process each, so
  not interleaved: read the CPU-time column).

Usage::

    nice python benchmarks/levers.py [--quick]

Writes ``benchmarks/results/levers.json`` and ``levers.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402

from keras_effcnn import models, provenance  # noqa: E402
from keras_effcnn.layers import BlurPool2D, conv_bn_act, fused_batch_norm  # noqa: E402

ROOT = throughput.ROOT
FLAGSHIP_RECIPES = {"effcnn_mnist": "mnist_1500", "effcnn_cifar10": "cifar10_140k"}


@contextlib.contextmanager
def keras_batch_norm():
    """Build blocks with Keras' own BatchNormalization (the package before the fused_bn lever)."""
    fused = conv_bn_act.FusedBatchNormalization
    conv_bn_act.FusedBatchNormalization = keras.layers.BatchNormalization
    try:
        yield
    finally:
        conv_bn_act.FusedBatchNormalization = fused


@contextlib.contextmanager
def full_blur_pad():
    """BlurPool2D padding both sides in full (the package before the trimmed_blur_pad lever)."""
    trimmed = BlurPool2D._trimmed_after
    BlurPool2D._trimmed_after = lambda self, size, after: after
    try:
        yield
    finally:
        BlurPool2D._trimmed_after = trimmed


@contextlib.contextmanager
def package_before_levers():
    """Every exact lever off (Keras' BatchNormalization leaves no fused kernel for bn_by_channels to pick)."""
    with keras_batch_norm(), full_blur_pad():
        yield


def _runner(name: str, recipe: str, context=contextlib.nullcontext, **options):
    keras.utils.set_random_seed(0)
    with context():
        model = models.build(name, **options)
        run, batch = throughput.train_step_runner(model, recipe)
        run()  # trace inside the context: the variant's ops are fixed from here on
    return run, batch


def compare(before, after, rounds: int, steps: int) -> dict:
    """Interleaved before/after train steps: per-round speed-up (before time / after time), medians."""
    times = throughput.interleaved({"before": before, "after": after}, rounds, steps)
    ratio = times["before"] / times["after"]
    return {
        clock: {"before_ms": 1e3 * float(np.median(times["before"][:, i])),
                "after_ms": 1e3 * float(np.median(times["after"][:, i])),
                "speedup": float(np.median(ratio[:, i]))}
        for i, clock in enumerate(throughput.CLOCKS)
    }


def bench_levers(rounds: int, steps: int) -> list[dict]:
    rows = []
    for name, recipe in FLAGSHIP_RECIPES.items():
        cases = [
            ("fused_bn", "Keras BatchNormalization -> FusedBatchNormalization",
             (keras_batch_norm, {}), (contextlib.nullcontext, {})),
            ("trimmed_blur_pad", "BlurPool2D pads only what its strided windows read",
             (full_blur_pad, {}), (contextlib.nullcontext, {})),
            ("bn_by_channels", "FusedBatchNormalization: the fused kernel only where channels % 4 == 0, "
             "Keras' ops elsewhere", (fused_kernel_everywhere, {}), (contextlib.nullcontext, {})),
            ("all exact levers", "fused_bn + bn_by_channels + trimmed_blur_pad against the package without them",
             (package_before_levers, {}), (contextlib.nullcontext, {})),
            ("zero_blur_pad (fast recipes)", "BlurPool2D border: reflect -> zero padding (no MirrorPad)",
             (contextlib.nullcontext, {}), (contextlib.nullcontext, {"blur_padding": "zero"})),
            ("no_blurpool (not adopted)", "BlurMaxPool -> MaxPooling2D(2): the cost of anti-aliasing",
             (contextlib.nullcontext, {}), (contextlib.nullcontext, {"blurpool": False})),
        ]
        for lever, what, (ctx_b, opt_b), (ctx_a, opt_a) in cases:
            before, batch = _runner(name, recipe, ctx_b, **opt_b)
            after, _ = _runner(name, recipe, ctx_a, **opt_a)
            result = compare(before, after, rounds, steps)
            rows.append({"model": name, "lever": lever, "what": what, "batch_size": batch, **result})
            print(f"{name:15s} {lever:28s} speed-up wall {result['wall']['speedup']:.2f}x "
                  f"CPU {result['cpu']['speedup']:.2f}x", flush=True)
    return rows


@contextlib.contextmanager
def fused_kernel_everywhere():
    """FusedBatchNormalization with TensorFlow's fused kernel at every channel count (before the bn_by_channels lever)."""
    rule = fused_batch_norm.fused_kernel_pays
    fused_batch_norm.fused_kernel_pays = lambda channels: True
    try:
        yield
    finally:
        fused_batch_norm.fused_kernel_pays = rule


# Activation shapes (batch, H, W) of the two flagships' blocks at their recipes' batches.
BN_SHAPES = {"mnist (256 x 24 x 24)": (256, 24, 24), "cifar10 (128 x 16 x 16)": (128, 16, 16)}
BN_CHANNELS = (4, 6, 8, 10, 12, 14, 15, 16, 20, 24, 28, 32, 40, 48, 64)


def bench_bn_channels(rounds: int, steps: int, channels=BN_CHANNELS) -> list[dict]:
    """Forward + backward of one training-mode BatchNorm: TensorFlow's fused kernel against Keras' ops, by channels."""
    import tensorflow as tf

    rows = []
    for label, (n, h, w) in BN_SHAPES.items():
        for c in channels:
            x = tf.constant(np.random.default_rng(0).standard_normal((n, h, w, c)).astype("float32"))
            runners = {}
            for kind in ("fused", "keras"):
                layer = (fused_batch_norm.FusedBatchNormalization if kind == "fused"
                         else keras.layers.BatchNormalization)(momentum=0.9, epsilon=1e-5)
                layer.build(x.shape)

                @tf.function
                def step(x, layer=layer):
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        loss = tf.reduce_sum(tf.nn.relu(layer(x, training=True)))
                    return tape.gradient(loss, [x, *layer.trainable_variables])

                runners[kind] = lambda step=step: step(x)
            with fused_kernel_everywhere():
                times = throughput.interleaved(runners, rounds, steps)
            ms = {kind: 1e3 * np.median(t, axis=0) for kind, t in times.items()}
            rows.append({"shape": label, "channels": c,
                         **{f"{kind}_ms": {clock: float(v[i]) for i, clock in enumerate(throughput.CLOCKS)}
                            for kind, v in ms.items()},
                         "rule_picks": "fused" if fused_batch_norm.fused_kernel_pays(c) else "keras"})
            print(f"BN {label} C={c:3d}: fused {ms['fused'][1]:6.2f} ms CPU, Keras {ms['keras'][1]:6.2f} ms CPU "
                  f"(rule: {rows[-1]['rule_picks']})", flush=True)
    return rows


def bench_batch(batches: dict[str, list[int]], rounds: int, steps: int) -> list[dict]:
    rows = []
    for name, sizes in batches.items():
        recipe = FLAGSHIP_RECIPES[name]
        runners = {}
        for size in sizes:
            keras.utils.set_random_seed(0)
            model = models.build(name)
            run, _ = throughput.train_step_runner(model, recipe, batch_size=size)
            runners[size] = run
        times = throughput.interleaved(runners, rounds, steps)
        for size in sizes:
            med = np.median(times[size], axis=0)
            rows.append({"model": name, "batch_size": size,
                         **{clock: {"images_per_s": float(size / med[i])} for i, clock in enumerate(throughput.CLOCKS)}})
            print(f"{name:15s} batch {size:4d}: {size / med[0]:7.0f} img/s wall, {size / med[1]:7.0f} img/CPU-s",
                  flush=True)
    return rows


def bench_threads(configs: list[tuple[int, int]], quick: bool) -> list[dict]:
    rows = []
    for intra, inter in configs:
        command = [sys.executable, str(Path(__file__).parent / "throughput.py"), "--models", *FLAGSHIP_RECIPES,
                   "--no-layers", "--out", "", "--json", "--intra-op-threads", str(intra),
                   "--inter-op-threads", str(inter), *(["--quick"] if quick else [])]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        for name, row in result["models"]["models"].items():
            rows.append({"model": name, "intra_op_threads": intra, "inter_op_threads": inter,
                         "wall": {"images_per_s": row["wall"]["images_per_s"]},
                         "cpu": {"images_per_s": row["cpu"]["images_per_s"]}})
            print(f"{name:15s} threads intra={intra} inter={inter}: {row['wall']['images_per_s']:7.0f} img/s wall, "
                  f"{row['cpu']['images_per_s']:7.0f} img/CPU-s", flush=True)
    return rows


def to_markdown(r: dict) -> str:
    lines = [
        "# Speed levers",
        "",
        f"`{r['command']}` on {r['date_utc']}, commit `{r['commit']}`, {r['machine']['cpu']}, "
        f"{r['machine']['logical_cpus']} logical CPUs shared with other jobs (load average "
        f"{', '.join(f'{v:.1f}' for v in r['load_average_start'])} at start, "
        f"{', '.join(f'{v:.1f}' for v in r['load_average_end'])} at end); {r['wall_s']:.0f} s wall, "
        f"{r['cpu_s']:.0f} s CPU. Train steps (`train_on_batch`, recipe optimizer and loss) on cached batches; "
        f"before/after interleaved in {r['rounds']} rounds of {r['steps']} steps, medians of per-round ratios.",
        "",
        "| model | lever | what | batch | before ms (CPU) | after ms (CPU) | speed-up (CPU) | speed-up (wall) | exact |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in r["levers"]:
        exact = ("no (border values)" if row["lever"].startswith("zero_blur_pad")
                 else "no (architecture)" if "not adopted" in row["lever"] else "yes (float rounding)")
        lines.append(f"| `{row['model']}` | {row['lever']} | {row['what']} | {row['batch_size']} | "
                     f"{row['cpu']['before_ms']:.1f} | {row['cpu']['after_ms']:.1f} | **{row['cpu']['speedup']:.2f}x** | "
                     f"{row['wall']['speedup']:.2f}x | {exact} |")
    if r.get("bn_channels"):
        lines += ["", "BatchNorm by channel count (one training-mode layer, forward + backward with a ReLU, "
                  "process CPU ms, medians; `bn_by_channels` picks the kernel by this table's rule):", "",
                  "| activations | channels | fused kernel ms (CPU) | Keras ops ms (CPU) | rule picks |",
                  "|---|---:|---:|---:|---|"]
        for row in r["bn_channels"]:
            lines.append(f"| {row['shape']} | {row['channels']} | {row['fused_ms']['cpu']:.2f} | "
                         f"{row['keras_ms']['cpu']:.2f} | {row['rule_picks']} |")
    tables = (
        ("batch", "Batch size (images/s; a recipe change, time-to-accuracy not validated here):",
         "| model | batch |", lambda row: f"{row['batch_size']} |"),
        ("threads", "Thread settings (one process each, not interleaved):", "| model | intra-op | inter-op |",
         lambda row: f"{row['intra_op_threads']} | {row['inter_op_threads']} |"),
    )
    for key, title, head, cells in tables:
        if not r[key]:
            continue
        lines += ["", title, "", head + " img/s (wall) | img/CPU-s |",
                  "|---|" + "---:|" * (head.count("|") - 2) + "---:|---:|"]
        for row in r[key]:
            lines.append(f"| `{row['model']}` | {cells(row)} {row['wall']['images_per_s']:,.0f} | "
                         f"{row['cpu']['images_per_s']:,.0f} |")
    return "\n".join(lines + ["", NOTES]) + "\n"


# Levers measured with scratch scripts while choosing the ones above (2026-11-30, same shared machine,
# forward + backward of one layer, process CPU ms, medians of interleaved rounds). Not rerun by this script.
NOTES = """Also measured while choosing (scratch scripts, not rerun by this script; forward + backward, batch 128,
32x32x32 input, process CPU ms, medians of 5 interleaved rounds): the current BlurPool2D(3, 2) (reflect pad +
depthwise 3x3 stride 2) 25.4; with the pad trimmed to what the windows read 20.5 (adopted); the same blur built
from two average pools (2x2 stride 1, then 2x2 stride 2, equal to float rounding) 12 % slower than the
depthwise conv (not adopted); two 1-D depthwise blurs 4.7x slower; strided-slice arithmetic 12x slower; reflect padding by
`concat` of slices 24.4 (no gain); the blur as a Conv2D over channels-in-batch 3.8x slower. Keras
BatchNormalization forward + backward at 128x16x16x64: 22.3 ms CPU, TensorFlow's fused kernel 6.8 ms (adopted).
oneDNN off (`TF_ENABLE_ONEDNN_OPTS=0`): the flagships ran 0.5x (MNIST) and 0.45x (CIFAR) the images per CPU-second
(not adopted). In the CIFAR-10 step profile (TF profiler, after the levers) the dense 3x3 convolution `s2_conv`
(32->64 at 16x16, 43 % of the MACs) takes ~24 % of the op time, and the reflect pads ~9 % (hence the fast
recipes' zero_blur_pad). Keras `mixed_bfloat16` (this CPU reports AVX512_BF16): cifar10_140k epochs 1.8x slower
per CPU-second (not adopted). Batch 64/128/256 for cifar10_140k_fast, idle: 1,067 / 1,178 / 1,208 img/s (no lever).

Cheaper architectures (train steps of scratch builds interleaved with the references in one process, 5 rounds;
accuracy from `recipes/develop.py` on the 5,000-image validation split, results in
`recipes/results/development/`): for CIFAR-10 a 16-channel stem and one block at 16x16
(`effcnn_cifar10(widths=(16, 48, 128, 224), blocks=(1, 1, 1))`, 129,936 params, 5.9 M MACs) ran 1.3-1.45x
ResNet-8's images/s (1.45-1.5x without SE), but reached 84.48 % validation accuracy after the 16 epochs of
cifar10_140k_fast against the net's 85.84 % (in 406 s instead of 618 s): not adopted. For MNIST the 1.5 K net at
half resolution (`effcnn_mnist(half_resolution=True)`: blurred 2x subsampling of the input) ran ~1.8x the stock
net's images/s, but reached 98.68 % validation accuracy after mnist_1500_fast's 20 epochs (90 s) against 99.10 %;
a stride-2 stem and a space-to-depth stem (scratch builds, 1,494 / 1,484 params, also ~1.8x) 98.80 % each: the
tiny net needs its full-resolution first layers, not adopted. SqueezeExcite's two 1x1 convolutions computed as
matmuls with the same kernels: forward + backward of the layer 1.2-2x faster (8x8x128 and 4x4x224, batch 128),
but the effcnn_cifar10 train step 0.99-1.02x (two interleaved runs), so not adopted (and the TFLite converter
mis-broadcast its gate when it was reshaped from 2-D). XLA for the tiny MNIST net
(`compile(jit_compile=True)`, 2026-12-01, train steps interleaved, 5 rounds of 20, beside a training job):
effcnn_mnist 6.1x (batch 64) and 9.3x (batch 256) slower per CPU-second, the stock separable reference 4.2x
slower (not profiled; XLA's depthwise convolutions were the slow part on CIFAR-10): not adopted. Where the
MNIST step goes (2026-12-01, process CPU ms per step at batch 64, means of 80 steps in each of 3 rounds, niced beside a training job):
the whole `train_on_batch` 24-29, forward + backward alone 23-26, SGD's update of all 28 variables 0.4-0.9,
so the optimizer is not the lever. A depthwise 3x3 convolution run as a dense `conv2d` with a diagonal kernel
(exactly equal) is 1.5-2.6x slower (medians of 3 rounds) than `depthwise_conv2d` at the net's shapes (8-14
channels, batch 64 and 256): not adopted. Parameter-free
activations for effcnn_mnist (`activation=`, scratch, same protocol as the XLA line, 5 rounds of 10 steps):
leaky_relu 1.06x (batch 64) and 1.08x (batch 256) the steps per CPU-second of ReLU, hard_swish 0.95x and 1.01x;
neither raised validation accuracy (`effcnn_mnist` docstring), so not adopted.

Channel widths the CPU kernels like (2026-12-07, idle Intel Xeon machine - the BatchNorm cliff above was found
on it and is not checked on the AMD EPYC host of the earlier rows -, scratch: `train_on_batch` of effcnn_mnist(widths=...)
at batch 256, medians of 5 interleaved rounds of 10 steps, before bn_by_channels): images/s 5,303 for the
shipped (8, 12, 12, 14, 16) (1,494 params), 7,290 for (8, 8, 12, 16, 16) (1,444), 7,461 for (8, 8, 16, 12, 16)
(1,412), 7,943 for (8, 8, 8, 16, 16) (1,296), 6,647 for (8, 16, 16, 16, 16) (1,888 params, more MACs, still
faster): the 12-channel 24x24 maps after the first block and every 14-channel BatchNorm are what is slow (the
BatchNorm table above). On 10,000 held-out training images with mnist_1500_fast (seeds 0-2,
`recipes/results/development/mnist_fast_w8_8_*_v10k_seed*.json`) the two 1,4xx-parameter nets (138-152 s of training on this
Intel machine; the baseline's 164-165 s were on the AMD one, so not comparable) ended at 98.98 / 98.63 / 98.97 % and 98.99 / 98.86 / 98.92 % validation accuracy against
99.09 / 98.84 / 99.19 % for the shipped widths (means 98.86 and 98.92 against 99.04 %): the tiny net needs 12
channels after its first block, so neither is adopted; bn_by_channels keeps the widths and takes the exact part
of the gain. bn_by_channels at mnist_1500_fast's batch 256 (same protocol, 5 rounds of 5 steps): 1.03x wall,
1.05x CPU (effcnn_mnist's 14-channel layers are at 8x8 and 4x4, where the cliff costs little)."""


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-threads", action="store_true", help="skip the thread-setting subprocesses")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    rounds, steps = (3, 2) if args.quick else (5, 3)
    load_start, start = os.getloadavg(), throughput._clocks()
    result = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": provenance.git_commit(ROOT),
        "machine": throughput.machine(),
        "rounds": rounds,
        "steps": steps,
        "levers": bench_levers(rounds, steps),
        "bn_channels": bench_bn_channels(rounds, steps + 3),
        "batch": bench_batch({"effcnn_mnist": [64, 128, 256, 512], "effcnn_cifar10": [128, 256, 512]}, rounds, steps),
        "threads": [] if args.no_threads else bench_threads([(2, 2), (2, 1), (1, 2), (1, 1)], args.quick),
    }
    elapsed = throughput._clocks() - start
    result.update(load_average_start=list(load_start), load_average_end=list(os.getloadavg()),
                  wall_s=float(elapsed[0]), cpu_s=float(elapsed[1]))
    text = to_markdown(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "levers.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "levers.md").write_text(text)
    return result


if __name__ == "__main__":
    main()

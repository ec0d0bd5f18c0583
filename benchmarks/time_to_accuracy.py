"""Training seconds to a target test accuracy, per recipe and seed, with a plot of accuracy against time.

Trains each recipe with ``keras_effcnn.recipes.fit(..., track_test=True)``: after
every epoch the test accuracy is recorded with the training seconds so far
(``TrainResult.timeline``, evaluation time excluded; for reporting only, nothing
is selected on it). Next to that wall-clock timeline the script records the
process CPU-seconds of training (all threads, evaluation excluded): on a shared
machine CPU-seconds / cores is the noise-robust figure. For each target it
reports the first epoch at or above it and the seconds to the end of that
epoch; the accuracy of a run is its final epoch's.

Resumable: every (recipe, seed) trains in ``--out/RECIPE/seedN`` with
checkpoints (``fit(out=...)``); a killed job started again with the same
command skips finished seeds and continues the interrupted one. The summary
(JSON + Markdown + PNG) of the recipes and seeds of the command goes to
``--results`` and is rewritten after each run: list every recipe in one command.

Usage::

    nice python benchmarks/time_to_accuracy.py --recipes mnist_1500 cifar10_140k --seeds 0 1 2 \\
        --out runs/tta --data-dir ../shared/data

    # smoke test: 512 training images, 1 epoch, results outside the repository
    python benchmarks/time_to_accuracy.py --recipes mnist_1500 --seeds 0 --subset 512 --epochs 1 \\
        --out runs/tta-smoke --results runs/tta-smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_effcnn import provenance, recipes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The targets: 99.2 % on MNIST, 86 % on CIFAR-10.
DEFAULT_TARGETS = {"mnist": (0.992,), "fashion_mnist": (0.90,), "cifar10": (0.86,)}


class CPUTimeline(keras.callbacks.Callback):
    """Process CPU-seconds spent in training epochs (``on_epoch_begin`` to ``on_epoch_end``), per epoch.

    Anything between epochs (the test evaluation of ``TestTimeline``) is not
    counted. Resumable through ``fit(out=...)``: ``get_state``/``set_state``
    carry the records and the seconds so far.
    """

    def __init__(self):
        super().__init__()
        self.records: list[dict] = []
        self._spent = 0.0
        self._begin = 0.0

    def get_state(self) -> dict:
        return {"records": [dict(r) for r in self.records], "spent": self._spent}

    def set_state(self, state: dict) -> None:
        self.records = [dict(r) for r in state["records"]]
        self._spent = float(state["spent"])

    def on_train_begin(self, logs=None):
        self.records, self._spent = [], 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._begin = time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self._spent += time.process_time() - self._begin
        self.records.append({"epoch": epoch + 1, "train_cpu_s": round(self._spent, 2)})


def targets_for(recipe: recipes.Recipe, overrides: dict[str, tuple[float, ...]]) -> tuple[float, ...]:
    return overrides.get(recipe.name) or overrides.get(recipe.dataset) or DEFAULT_TARGETS.get(recipe.dataset, ())


def time_to(timeline: list[dict], target: float) -> dict | None:
    """The first epoch whose test accuracy is >= ``target``, with its training seconds; None if never."""
    for record in timeline:
        if record["test_accuracy"] >= target:
            return {"epoch": record["epoch"], "wall_s": record["train_wall_s"], "cpu_s": record["train_cpu_s"]}
    return None


def run_seed(name: str, seed: int, args, run_dir: Path, command: str = "") -> dict:
    """Trains one (recipe, seed) in ``run_dir`` (resuming a checkpoint there) and returns its record.

    The run folder also gets ``model.weights.h5`` and a ``results.json`` as ``keras-effcnn
    train`` writes it (final-epoch test loss and accuracy, recipe, command, commit), so a
    seed of this benchmark can be shipped as it is (``recipes/ship.py``).
    """
    recipe = recipes.resolve(name).replace(seed=seed)
    commit = provenance.git_commit(ROOT)  # the code the run starts with (HEAD may move while it trains)
    model = recipes.build(recipe)
    cpu = CPUTimeline()
    load_start, wall_start, cpu_start = os.getloadavg(), time.perf_counter(), time.process_time()
    result = recipes.fit(model, args.data_dir, recipe=recipe, epochs=args.epochs, subset=args.subset,
                         track_test=True, out=run_dir, callbacks=[cpu], verbose=args.verbose,
                         save_every_steps=args.save_every_steps)
    model.save_weights(run_dir / "model.weights.h5")  # for the robustness report, export and shipping
    (run_dir / "results.json").write_text(json.dumps(result.results_record(command, commit), indent=2) + "\n")
    timeline = [{**wall, **c} for wall, c in zip(result.timeline, cpu.records)]
    cores = _tf_threads() if keras.config.backend() == "tensorflow" else os.cpu_count()
    return {
        "recipe": recipe.name,
        "seed": seed,
        "epochs": result.epochs,
        "subset": args.subset,
        "params": result.params["trainable"],
        "final_test_accuracy": result.test_accuracy,
        "timeline": timeline,
        "targets": {f"{t:.4f}": time_to(timeline, t) for t in targets_for(recipe, args.targets)},
        "train_wall_s": timeline[-1]["train_wall_s"],
        "train_cpu_s": timeline[-1]["train_cpu_s"],
        "cores": cores,
        "process_wall_s": time.perf_counter() - wall_start,
        "process_cpu_s": time.process_time() - cpu_start,
        "resumed_from": result.resumed_from,
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
    }


def add_flip_tta(record: dict, args, run_dir: Path) -> dict:
    """Adds the final weights' test accuracy with flip test-time augmentation (flip recipes only).

    Its own column, never the headline: ``keras_effcnn.test_time`` averages the
    predictions on each test image and its mirror. Computed from the run's saved
    final weights, so it can be added to seeds that finished earlier.
    """
    recipe = recipes.resolve(record["recipe"]).replace(seed=record["seed"])
    weights = run_dir / "model.weights.h5"
    if not recipe.flip or "final_test_accuracy_flip_tta" in record or not weights.exists():
        return record
    from keras_effcnn import data, test_time

    model = recipes.build(recipe)
    model.load_weights(weights)
    _, (x, y) = data.load_arrays(recipe.dataset, args.data_dir)
    x = x.astype("float32") / 255.0  # as the pipelines feed the model (it normalises inside)
    return {**record, "final_test_accuracy_flip_tta": test_time.accuracy_with_flips(model, x, y)}


def _tf_threads() -> int:
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()


def summarize(runs: list[dict]) -> dict:
    """Per recipe: median and worst seconds to each target (None when a seed missed it), final accuracies."""
    out = {}
    for name in dict.fromkeys(r["recipe"] for r in runs):
        mine = [r for r in runs if r["recipe"] == name]
        row = {"seeds": [r["seed"] for r in mine],
               "final_test_accuracy": [r["final_test_accuracy"] for r in mine],
               "final_test_accuracy_mean": float(np.mean([r["final_test_accuracy"] for r in mine])),
               "final_test_accuracy_median": float(np.median([r["final_test_accuracy"] for r in mine])),
               "final_test_accuracy_min": float(min(r["final_test_accuracy"] for r in mine)),
               "final_test_accuracy_flip_tta": [r.get("final_test_accuracy_flip_tta") for r in mine],
               "train_wall_s_median": float(np.median([r["train_wall_s"] for r in mine])),
               "train_cpu_s_median": float(np.median([r["train_cpu_s"] for r in mine])),
               "targets": {}}
        for target in mine[0]["targets"]:
            hits = [r["targets"][target] for r in mine]
            reached = [h for h in hits if h is not None]
            # A seed that missed the target counts as infinitely slow: the median stays finite
            # while most seeds reach it, the worst case does not.
            row["targets"][target] = {"reached": f"{len(reached)}/{len(hits)}"}
            for clock in ("wall_s", "cpu_s"):
                times = [math.inf if h is None else h[clock] for h in hits]
                for stat, value in (("median", float(np.median(times))), ("worst", max(times))):
                    row["targets"][target][f"{clock}_{stat}"] = None if math.isinf(value) else float(value)
        out[name] = row
    return out


def to_markdown(result: dict) -> str:
    lines = [
        "# Time to accuracy",
        "",
        f"`{result['command']}`; {result['machine']}. Training seconds exclude the per-epoch test evaluation; "
        "wall seconds on a shared machine include waiting for other jobs, process CPU-seconds (all threads) do not. "
        "A target counts from the first epoch whose test accuracy reaches it; accuracy = final-epoch test accuracy. "
        "Per-seed runs, load averages and commits: the JSON file next to this one.",
        "",
        "| recipe | seeds | target | reached | wall s median / worst | CPU s median / worst | final acc. mean "
        "| final acc. median (min) | with flip TTA median (min) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(v):
        return "not reached" if v is None else f"{v:,.0f}"

    def tta(row):
        values = row.get("final_test_accuracy_flip_tta") or []
        if not values or None in values:
            return "n/a"
        return f"{100 * float(np.median(values)):.2f} % ({100 * min(values):.2f} %)"

    for name, row in result["summary"].items():
        for target, t in row["targets"].items():
            lines.append(
                f"| `{name}` | {', '.join(map(str, row['seeds']))} | {100 * float(target):.2f} % | {t['reached']} | "
                f"{fmt(t['wall_s_median'])} / {fmt(t['wall_s_worst'])} | {fmt(t['cpu_s_median'])} / "
                f"{fmt(t['cpu_s_worst'])} | {100 * float(np.mean(row['final_test_accuracy'])):.2f} % | "
                f"{100 * row['final_test_accuracy_median']:.2f} % "
                f"({100 * row['final_test_accuracy_min']:.2f} %) | {tta(row)} |")
    lines += ["", "Flip TTA: the final weights' test accuracy when the predictions on each image and its mirror are "
              "averaged (`keras_effcnn.test_time`; flip-augmented recipes only, n/a otherwise). Its own column: "
              "targets and the headline use the plain accuracy."]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], targets: dict[str, list[float]], path: Path) -> None:
    """Test accuracy against training wall seconds, one panel per dataset, one colour per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(recipes.resolve(r["recipe"]).dataset for r in runs))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    colours = dict(zip(dict.fromkeys(r["recipe"] for r in runs), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, dataset in zip(axes[0], datasets):
        labelled = set()
        for r in runs:
            if recipes.resolve(r["recipe"]).dataset != dataset:
                continue
            t = r["timeline"]
            label = None if r["recipe"] in labelled else r["recipe"]
            labelled.add(r["recipe"])
            ax.plot([p["train_wall_s"] for p in t], [100 * p["test_accuracy"] for p in t], "o-", ms=3,
                    color=colours[r["recipe"]], alpha=0.8, label=label)
        for target in targets.get(dataset, ()):
            ax.axhline(100 * target, color="grey", ls="--", lw=1)
        ax.set(title=dataset, xlabel="training seconds (wall)", ylabel="test accuracy (%)")
        accs = [100 * p["test_accuracy"] for r in runs if recipes.resolve(r["recipe"]).dataset == dataset
                for p in r["timeline"]]
        ax.set_ylim(max(0, min(min(accs) - 1, 100 * min(targets.get(dataset, (1,))) - 5)), 100)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parse_targets(items: list[str]) -> dict[str, tuple[float, ...]]:
    out = {}
    for item in items:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"--target takes RECIPE_OR_DATASET=ACC[,ACC...] (e.g. mnist=0.992); got {item!r}")
        out[key] = tuple(float(v) for v in values.split(","))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["mnist_1500", "cifar10_140k"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--target", dest="targets", action="append", default=[],
                        help="RECIPE_OR_DATASET=ACC[,ACC] (default: mnist=0.992, cifar10=0.86)")
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_EFFCNN_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=None, help="override the recipes' epochs (smoke tests)")
    parser.add_argument("--subset", type=int, default=None, help="first N training images only (smoke tests)")
    parser.add_argument("--out", default="runs/tta", help="run folders (checkpoints; resumed when present)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                        help="folder for time_to_accuracy.{json,md,png}")
    parser.add_argument("--save-every-steps", type=int, default=None,
                        help="also checkpoint every N batches (default: at epoch ends only, so that the timed "
                             "training holds little checkpoint writing; a kill loses at most one epoch)")
    parser.add_argument("--verbose", default=2, type=int, help="Keras fit verbosity")
    args = parser.parse_args(argv)
    args.targets = _parse_targets(args.targets)
    if args.subset is not None and Path(args.results).resolve() == (ROOT / "benchmarks" / "results").resolve():
        raise SystemExit("--subset runs are smoke tests: give --results outside benchmarks/results")

    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, Python " \
              f"{platform.python_version()}, Keras {keras.__version__} ({keras.config.backend()})"
    runs = []
    # Seed-major: every recipe's first seed comes before any recipe's second one.
    for seed in args.seeds:
        for name in args.recipes:
            run_dir = Path(args.out) / name / f"seed{seed}"
            done = run_dir / "time_to_accuracy.json"
            if done.exists():
                print(f"{name} seed {seed}: done earlier ({done})", flush=True)
                record = json.loads(done.read_text())
            else:
                print(f"{name} seed {seed}: training in {run_dir}", flush=True)
                run_dir.mkdir(parents=True, exist_ok=True)
                record = run_seed(name, seed, args, run_dir, command)
            record = add_flip_tta(record, args, run_dir)
            done.write_text(json.dumps(record, indent=2) + "\n")
            runs.append(record)
            targets = {recipes.resolve(r).dataset: list(targets_for(recipes.resolve(r), args.targets))
                       for r in args.recipes}
            result = {"command": command, "machine": machine, "targets": targets, "summary": summarize(runs),
                      "runs": runs}
            results = Path(args.results)
            results.mkdir(parents=True, exist_ok=True)
            (results / "time_to_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
            (results / "time_to_accuracy.md").write_text(to_markdown(result))
            plot(runs, targets, results / "time_to_accuracy.png")
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()

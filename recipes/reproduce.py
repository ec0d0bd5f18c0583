"""Reproduce the paper's phases: train each phase recipe and write a results table.

Usage (from the repository root; runs for a long time, so start it in the background):

    nohup python recipes/reproduce.py --dataset mnist --data-dir ../shared/data --seeds 0 \
        > recipes/results/mnist_phases.log 2>&1 &

For every phase recipe of the dataset (``keras_effcnn.recipes.list_recipes()``) it
builds the compiled model, trains it with ``recipes.fit`` and records the
**final-epoch** test accuracy (never a selected epoch), parameters, MACs, wall
time, seed, the command and the commit. Results go to
``recipes/results/<dataset>_phases.{json,md,png}`` and each final model's weights to
``recipes/results/models/``; rows already present for the
same (recipe, seed, epochs) are kept, so an interrupted reproduction resumes.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "cifar10"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    parser.add_argument("--only", nargs="*", default=None, help="recipe names to run (default: all phases)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)

    from keras_effcnn import recipes

    names = args.only or [n for n in recipes.list_recipes() if n.startswith(f"{args.dataset}_phase")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{args.dataset}_phases.json"
    doc = json.loads(json_path.read_text()) if json_path.exists() else {"rows": []}
    doc.update(machine=f"{platform.machine()}, {_cpus()} CPUs, {platform.python_version()}",
               command="python recipes/reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    done = {(r["recipe"], r["seed"], r["epochs"]) for r in doc["rows"]}

    for seed in args.seeds:
        for name in names:
            recipe = recipes.get_recipe(name).replace(seed=seed, **({"epochs": args.epochs} if args.epochs else {}))
            if (name, seed, recipe.epochs) in done:
                continue
            print(f"=== {name} seed {seed} ({recipe.epochs} epochs)", flush=True)
            model = recipes.build(recipe)
            result = recipes.fit(model, args.data_dir, verbose=2)
            # Kept for the robustness comparison (e.g. BlurPool vs none); small files.
            (out / "models").mkdir(exist_ok=True)
            model.save_weights(out / "models" / f"{name}-seed{seed}-e{recipe.epochs}.weights.h5")
            doc["rows"].append({"recipe": name, "description": recipe.description, "seed": seed,
                                "epochs": recipe.epochs, "params": result.params["trainable"], "macs": result.macs,
                                "test_accuracy": result.test_accuracy, "wall_time_s": round(result.wall_time_s, 1),
                                "commit": _commit(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
            json_path.write_text(json.dumps(doc, indent=2) + "\n")
            write_table(doc, out / f"{args.dataset}_phases.md")
            print(f"    final-epoch test accuracy {result.test_accuracy:.4f}", flush=True)
    write_table(doc, out / f"{args.dataset}_phases.md")
    plot_phases(doc, out / f"{args.dataset}_phases.png")
    return 0


def write_table(doc: dict, path: Path) -> None:
    lines = [f"Command: `{doc['command']}`  ", f"Machine: {doc['machine']}", "",
             "| recipe | what it adds | params | MACs | epochs | seed | final-epoch test acc. | wall time (s) | commit |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['recipe']} | {r['description']} | {r['params']:,} | {r['macs']:,} | {r['epochs']} | "
                     f"{r['seed']} | {100 * r['test_accuracy']:.2f} % | {r['wall_time_s']:.0f} | {r['commit'][:8]} |")
    path.write_text("\n".join(lines) + "\n")


def plot_phases(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    if not rows:
        return
    names = [r["recipe"].split("_phase")[-1] for r in rows]
    acc = [100 * r["test_accuracy"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows)), 4))
    ax.bar(range(len(rows)), acc, color="tab:blue")
    ax.set_xticks(range(len(rows)), names, rotation=45, ha="right")
    ax.set_ylim(min(acc) - 0.5, 100)
    ax.set_ylabel("final-epoch test accuracy (%)")
    ax.set_title("Phase by phase")
    for i, a in enumerate(acc):
        ax.text(i, a + 0.02, f"{a:.2f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=HERE).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())

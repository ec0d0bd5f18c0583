"""Robustness of several trained models side by side: is a difference the recipe's or one seed's?

``docs/robustness.md`` measures one set of weights per recipe. A change seen there (e.g. the
80-epoch ``mnist_1500`` weights losing brightness robustness against the 45-epoch ones) may
belong to the seed rather than to the recipe. This script runs the same report
(``keras_effcnn.robustness.evaluate_robustness``: first ``--n`` test images, severities 1-3,
shifts 1/2/4, seed 0) on every model given and tabulates, per group of models, the mean and
spread of the clean accuracy, each corruption's mean over severities, the mean corruption
accuracy and the shift consistency.

Usage::

    python benchmarks/robustness_seeds.py --name robustness_seeds_mnist_1500 --data-dir ../shared/data \\
        --model "45 epochs" mnist_1500 runs/dev/mnist_1500_e45_v10k_seed0/checkpoints \\
        --model "80 epochs" mnist_1500 runs/dev/mnist_1500_e80_v10k_seed0/checkpoints  ...

``--model GROUP RECIPE WEIGHTS``: WEIGHTS is anything ``recipes.build(weights=...)`` takes (a
preset, a ``.weights.h5`` file, a run's checkpoint folder or file). Each file's SHA-256 is
recorded, since run folders are not committed. Writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_effcnn import data, provenance, recipes  # noqa: E402
from keras_effcnn.robustness import evaluate_robustness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _sha256(weights: str) -> str | None:
    path = Path(weights)
    if path.is_dir():  # a checkpoints folder: the newest file is the one loaded
        from keras_effcnn.callbacks.checkpoint import latest_checkpoint

        path = latest_checkpoint(path).path
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def measure(models: list[tuple[str, str, str]], n: int, data_dir) -> list[dict]:
    rows = []
    for group, recipe, weights in models:
        model = recipes.build(recipe, weights=weights)
        _, (x, y) = data.load_arrays(model.training_plan.dataset, data_dir)
        report = evaluate_robustness(model, x[:n], y[:n])
        rows.append(dict(group=group, recipe=recipe, weights=weights, sha256=_sha256(weights), **report.to_dict()))
        print(f"{group:>24s}  {weights}: clean {report.clean_accuracy:.4f}, "
              f"mean corruption {report.mean_corruption_accuracy:.4f}", flush=True)
    return rows


def _columns(row: dict) -> dict[str, float]:
    cols = {"clean": row["clean_accuracy"]}
    cols.update({name: statistics.fmean(by_severity.values())
                 for name, by_severity in row["corruption_accuracy"].items()})
    cols["all corruptions"] = row["mean_corruption_accuracy"]
    cols.update({f"shift k={k}": v for k, v in row["shift_consistency"].items()})
    return cols


def to_markdown(doc: dict) -> str:
    rows = doc["rows"]
    names = list(_columns(rows[0]))
    header = ["| group | weights | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    lines = [f"# {doc['title']}", "", f"Command: `{doc['command']}` at commit `{doc['commit']}`, {doc['date_utc']}.",
             "", f"First {doc['n_images']:,} test images; accuracy under each corruption is the mean over "
             "severities 1-3; shift consistency: how often two random shifts of up to k pixels get the same "
             "class (`keras_effcnn.robustness`). Means ± sample standard deviation per group:", ""] + header
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(_columns(r))
    for group, cols in groups.items():
        cells = []
        for name in names:
            values = [c[name] for c in cols]
            sd = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.4f}{sd}")
        lines.append(f"| {group} | {len(cols)} model(s) | " + " | ".join(cells) + " |")
    lines += ["", "Every model:", ""] + header
    lines += [f"| {r['group']} | `{r['weights']}` | " + " | ".join(f"{v:.4f}" for v in _columns(r).values()) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs=3, action="append", required=True, metavar=("GROUP", "RECIPE", "WEIGHTS"))
    parser.add_argument("--name", required=True, help="results file stem, e.g. robustness_seeds_mnist_1500")
    parser.add_argument("--title", default="Robustness across seeds")
    parser.add_argument("--n", type=int, default=2000, help="test images, from the start of the test set")
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_EFFCNN_DATA_DIR"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    doc = dict(title=args.title,
               command="python " + shlex.join([os.path.relpath(__file__, ROOT),
                                               *(argv if argv is not None else sys.argv[1:])]),
               commit=provenance.git_commit(ROOT),
               date_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               n_images=args.n, rows=measure([tuple(m) for m in args.model], args.n, args.data_dir))
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(to_markdown(doc))
    print(to_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The docs' results tables and plots, made only from committed results files.

    python docs/make_figures.py [--out docs/_build/generated] [--readme README.md]

``docs/conf.py`` runs it at every build. It reads

* ``recipes/results/<dataset>_phases.json``, written by
  ``python recipes/reproduce.py --dataset <dataset> ...``: one row per (phase recipe,
  seed) with the final-epoch test accuracy, parameters, MACs and wall time;
* ``keras_effcnn/weights/*.json``: the shipped weights' training results (the
  ``results.json`` of ``keras-effcnn train``: recipe, test metrics, parameters, MACs,
  command, optionally ``history``) and their TFLite export reports (the
  ``<stem>.report.json`` of ``keras-effcnn export``: size, and in ``evaluation`` the
  int8 accuracy and latency);
* ``benchmarks/results/*.md``, shown verbatim;

and writes Markdown fragments and PNG plots that the pages include. Each table names
its source file and the command recorded in it. A missing file gives "not yet
measured" with the command that would measure it; no number is typed by hand. The
zoo's parameters and MACs are computed live with ``keras_effcnn.models.summary_table``.

``--readme`` rewrites the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` of that file with the headline table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "_build" / "generated"
PHASE_DATASETS = ("mnist", "cifar10")
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
NOT_MEASURED = "not yet measured"

# Technique page -> the phase-recipe suffix that adds it (`<dataset>_phase<k>_<suffix>`).
TECHNIQUES = {
    "depthwise_gap": "depthwise_gap",
    "blurpool": "blurpool",
    "squeeze_excite": "se",
    "cyclical_lr": "cyclical_lr",
    "mixup": "mixup",
    "cutout": "cutout",
    "label_smoothing": "label_smoothing",
    "swa": "swa",
    "sam": "sam",
}
_PHASE_NAME = re.compile(r"^(?P<dataset>.+?)_phase(?P<number>\d+)_(?P<suffix>\w+)$")
# Recipe fields that don't change what is trained.
_IGNORED_FIELDS = ("name", "description", "seed")


@dataclass
class Sources:
    """Where the results files live (the repository's folders by default; tests pass others)."""

    phases: Path = ROOT / "recipes" / "results"
    weights: Path = ROOT / "keras_effcnn" / "weights"
    benchmarks: Path = ROOT / "benchmarks" / "results"

    def rel(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(ROOT))
        except ValueError:
            return str(path)


@dataclass
class Group:
    """The rows of one (recipe, epochs) in a phase results file, one per seed."""

    recipe: str
    description: str
    epochs: int
    params: int
    macs: int
    accuracy: dict[int, float] = field(default_factory=dict)  # seed -> final-epoch test accuracy
    wall_time_s: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracy.values())

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.accuracy.values()) if len(self.accuracy) > 1 else None

    @property
    def seeds(self) -> list[int]:
        return sorted(self.accuracy)


@dataclass
class Comparison:
    """A phase against the phase it changes, paired over the seeds both ran."""

    group: Group
    baseline: Group
    changed: list[str]
    seeds: list[int]

    @property
    def delta_pp(self) -> float:
        return 100 * statistics.fmean(self.group.accuracy[s] - self.baseline.accuracy[s] for s in self.seeds)


# ----------------------------------------------------------------------------- reading


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def phase_groups(doc: dict) -> list[Group]:
    """Rows grouped by (recipe, epochs), in the order they first appear."""
    groups: dict[tuple[str, int], Group] = {}
    for row in doc.get("rows", []):
        key = (row["recipe"], int(row["epochs"]))
        if key not in groups:
            groups[key] = Group(row["recipe"], row.get("description", ""), key[1], int(row["params"]),
                                int(row["macs"]))
        groups[key].accuracy[int(row["seed"])] = float(row["test_accuracy"])
        if row.get("wall_time_s") is not None:
            groups[key].wall_time_s.append(float(row["wall_time_s"]))
    return sorted(groups.values(), key=lambda g: (_phase_number(g.recipe), g.recipe, g.epochs))


def _phase_number(name: str) -> int:
    match = _PHASE_NAME.match(name)
    return int(match["number"]) if match else 10**6


def _recipe_fields(name: str) -> dict | None:
    from keras_effcnn import recipes

    try:
        fields = recipes.get_recipe(name).to_dict()
    except ValueError:
        return None
    return {k: v for k, v in fields.items() if k not in _IGNORED_FIELDS}


def changed_fields(name: str, other: str) -> list[str] | None:
    """Recipe fields in which two registered recipes differ (None if either is unknown)."""
    a, b = _recipe_fields(name), _recipe_fields(other)
    if a is None or b is None:
        return None
    return sorted(k for k in a if a[k] != b.get(k))


def baseline_for(group: Group, groups: Sequence[Group]) -> Comparison | None:
    """The earlier phase this phase differs from least (ties: the latest), with shared seeds.

    Phases 2-5 of the paper add to the one before; phases 6-10 each add one technique
    to phase 5. Reading the difference off the recipes keeps that knowledge in
    ``recipes.py`` alone.
    """
    number = _phase_number(group.recipe)
    best = None
    for other in groups:
        if other.epochs != group.epochs or _phase_number(other.recipe) >= number:
            continue
        changed = changed_fields(group.recipe, other.recipe)
        if changed is None:
            continue
        seeds = sorted(set(group.accuracy) & set(other.accuracy))
        rank = (len(changed), -_phase_number(other.recipe))
        if seeds and (best is None or rank < best[0]):
            best = (rank, Comparison(group, other, changed, seeds))
    return best[1] if best else None


@dataclass
class Shipped:
    """A shipped model: its training result and its export reports."""

    recipe: str
    model: str
    dataset: str
    result: dict
    source: str
    reports: dict[str, tuple[dict, str]] = field(default_factory=dict)  # quantize -> (report, source)
    history: dict | None = None


def shipped_models(sources: Sources) -> list[Shipped]:
    """Training results in the weights folder, with the export reports and histories that go with them."""
    if not sources.weights.is_dir():
        return []
    docs = [(path, read_json(path)) for path in sorted(sources.weights.glob("*.json"))]
    shipped = {}
    for path, doc in docs:
        if isinstance(doc, dict) and "recipe" in doc and "test" in doc:
            recipe = doc["recipe"]
            shipped[recipe["name"]] = Shipped(recipe["name"], recipe["model"], recipe["dataset"], doc,
                                              sources.rel(path), history=doc.get("history"))
    by_length = sorted(shipped, key=len, reverse=True)
    for path, doc in docs:
        owner = next((name for name in by_length if path.name.startswith(name)), None)
        if owner is None or not isinstance(doc, dict):
            continue
        if "size_bytes" in doc and "quantize" in doc:
            shipped[owner].reports[str(doc["quantize"])] = (doc, sources.rel(path))
        elif "loss" in doc and isinstance(doc["loss"], list) and shipped[owner].history is None:
            shipped[owner].history = doc
    return list(shipped.values())


# ----------------------------------------------------------------------------- formatting


def pct(value: float, sd: float | None = None) -> str:
    text = f"{100 * value:.2f} %"
    return text if sd is None else f"{100 * value:.2f} ± {100 * sd:.2f} %"


def signed_pp(value: float) -> str:
    return f"{value:+.2f} pp"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    rows = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _source_line(path: str, command: str | None) -> str:
    made = f", written by `{command}`" if command else ""
    return f"Source: `{path}`{made}."


def reproduce_command(dataset: str, only: Sequence[str] = ()) -> str:
    extra = f" --only {' '.join(only)}" if only else ""
    return f"python recipes/reproduce.py --dataset {dataset} --data-dir ../shared/data --seeds 0 1 2{extra}"


# ----------------------------------------------------------------------------- phase tables and plots


def load_phases(sources: Sources, dataset: str) -> tuple[dict | None, list[Group], str]:
    path = sources.phases / f"{dataset}_phases.json"
    if not path.exists():
        return None, [], sources.rel(path)
    doc = read_json(path)
    return doc, phase_groups(doc), sources.rel(path)


def phases_markdown(sources: Sources, dataset: str) -> str:
    doc, groups, rel = load_phases(sources, dataset)
    if not groups:
        return (f"*{NOT_MEASURED.capitalize()}* (`{rel}` does not exist yet). Measure it with\n\n"
                f"```bash\n{reproduce_command(dataset)}\n```\n")
    rows = []
    for g in groups:
        comparison = baseline_for(g, groups)
        delta = (f"{signed_pp(comparison.delta_pp)} vs. phase {_phase_number(comparison.baseline.recipe)}"
                 if comparison else "")
        phase = _phase_number(g.recipe)
        wall = f"{statistics.fmean(g.wall_time_s):.0f}" if g.wall_time_s else ""
        rows.append([phase if phase < 10**6 else "", f"`{g.recipe}`", g.description, f"{g.params:,}",
                     f"{g.macs:,}", g.epochs, ", ".join(map(str, g.seeds)), pct(g.mean, g.sd), delta, wall])
    table = markdown_table(
        ["phase", "recipe", "what it changes", "params", "MACs", "epochs", "seeds",
         "final-epoch test acc. (mean ± sd)", "change (paired seeds)", "wall time (s)"],
        rows, align="lllrrrlrrr")
    machine = f" Machine: {doc['machine']}." if doc.get("machine") else ""
    return (table + "\n" + _source_line(rel, doc.get("command")) + machine +
            " Accuracy is the final epoch's, mean over seeds; \"change\" is the mean over the seeds both "
            "runs share of the difference to the earlier phase whose recipe differs least.\n")


def plot_phases(groups: Sequence[Group], path: Path, title: str) -> bool:
    if not groups:
        return False
    plt = _pyplot()
    labels = [g.recipe.split("_phase")[-1] if "_phase" in g.recipe else g.recipe for g in groups]
    means = [100 * g.mean for g in groups]
    errors = [100 * (g.sd or 0.0) for g in groups]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(groups)), 4.0))
    ax.bar(range(len(groups)), means, yerr=errors, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(groups)), labels, rotation=40, ha="right")
    low = min(m - e for m, e in zip(means, errors))
    ax.set_ylim(max(0.0, low - 0.5), min(100.0, max(m + e for m, e in zip(means, errors)) + 0.3))
    ax.set_ylabel("final-epoch test accuracy (%)")
    ax.set_title(title)
    for i, m in enumerate(means):
        ax.annotate(f"{m:.2f}", (i, m), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- techniques


def technique_markdown(sources: Sources, key: str) -> str:
    """What one technique changed in every phase results file that has its phase."""
    suffix = TECHNIQUES[key]
    paragraphs = []
    for dataset in PHASE_DATASETS:
        doc, groups, rel = load_phases(sources, dataset)
        mine = [g for g in groups if (m := _PHASE_NAME.match(g.recipe)) and m["suffix"] == suffix]
        for g in mine:
            comparison = baseline_for(g, groups)
            if comparison is None:
                paragraphs.append(f"- {dataset}: `{g.recipe}` reached {pct(g.mean, g.sd)} final-epoch test "
                                  f"accuracy (seeds {', '.join(map(str, g.seeds))}); the phase it builds on is "
                                  f"{NOT_MEASURED}. {_source_line(rel, doc.get('command'))}")
                continue
            b = comparison.baseline
            seeds = ", ".join(map(str, comparison.seeds))
            paragraphs.append(
                f"- {dataset}, {g.epochs} epochs, seeds {seeds}: `{g.recipe}` "
                f"{pct(statistics.fmean(g.accuracy[s] for s in comparison.seeds))} vs. `{b.recipe}` "
                f"{pct(statistics.fmean(b.accuracy[s] for s in comparison.seeds))} final-epoch test accuracy, "
                f"**{signed_pp(comparison.delta_pp)}** (recipes differ in: {', '.join(comparison.changed)}); "
                f"parameters {g.params:,} vs. {b.params:,}, MACs {g.macs:,} vs. {b.macs:,}. "
                f"{_source_line(rel, doc.get('command'))}")
    if not paragraphs:
        return (f"*{NOT_MEASURED.capitalize()}.* The phase recipes that measure it are run by\n\n"
                f"```bash\n{reproduce_command('mnist')}\n```\n")
    return "\n".join(paragraphs) + "\n"


# ----------------------------------------------------------------------------- zoo


def zoo_markdown(sources: Sources, rows: Sequence[dict] | None = None) -> str:
    """Every zoo model: live parameter/MAC counts, and the shipped results where they exist."""
    from keras_effcnn import models

    rows = models.summary_table() if rows is None else rows
    shipped = {}
    for s in shipped_models(sources):
        shipped.setdefault(s.model, []).append(s)
    table, notes = [], []
    deviations = []
    for row in rows:
        paper = f"{row['paper_params']:,}" if row.get("paper_params") else ""
        if row.get("paper_params") and row["paper_params"] != row["trainable"]:
            deviations.append(row)
        base = [f"`{row['model']}`", row["dataset"], f"{row['trainable']:,}", f"{row['total']:,}", paper,
                f"{row['macs']:,}"]
        for s in shipped.get(row["model"], []) or [None]:
            if s is None:
                table.append(base + ["", NOT_MEASURED, NOT_MEASURED, NOT_MEASURED, NOT_MEASURED])
                continue
            report = s.reports.get("int8")
            evaluation = (report[0].get("evaluation") or {}) if report else {}
            table.append(base + [
                f"`{s.recipe}`",
                pct(float(s.result["test"]["accuracy"])),
                f"{report[0]['size_bytes'] / 1000:.1f} KB" if report else NOT_MEASURED,
                pct(float(evaluation["accuracy"])) if "accuracy" in evaluation else NOT_MEASURED,
                f"{float(evaluation['latency_ms']):.3f} ms" if "latency_ms" in evaluation else NOT_MEASURED,
            ])
            notes.append(f"- `{s.recipe}`: {_source_line(s.source, s.result.get('command'))}")
            if report:
                notes.append(f"- `{s.recipe}` int8: {_source_line(report[1], report[0].get('command'))}")
    text = markdown_table(
        ["model", "dataset", "params (trainable)", "params (with BN buffers)", "paper's count", "MACs",
         "shipped recipe", "final-epoch test acc.", "int8 .tflite size", "int8 test acc.", "int8 latency"],
        table, align="llrrrrlrrrr")
    for row in deviations:
        diff = row["trainable"] - row["paper_params"]
        text += (f"\n`{row['model']}` is a reconstruction: the paper states {row['paper_params']:,} parameters "
                 f"but not every layer width, so the rebuilt network has {row['trainable']:,} "
                 f"({diff:+,}, {100 * diff / row['paper_params']:+.2f} %); the test suite pins both numbers "
                 "(`tests/test_counting.py`).\n")
    text += ("\nParameters and MACs are computed when the docs are built "
             "(`keras_effcnn.models.summary_table()`, default builder options). Accuracy, size and latency "
             "come from the shipped weights' results files")
    text += (":\n\n" + "\n".join(notes) + "\n") if notes else (
        f"; none is committed yet (`{sources.rel(sources.weights)}/*.json`).\n")
    text += ("\nLatency is the median single-image, single-thread LiteRT invoke on the machine that ran the "
             "export (`keras_effcnn.export.latency_ms`).\n")
    return text


# ----------------------------------------------------------------------------- Pareto and curves


def pareto_points(sources: Sources) -> dict[str, list[tuple[str, int, float]]]:
    """``dataset -> [(label, params, final-epoch accuracy)]`` of every phase group and shipped model."""
    points: dict[str, list[tuple[str, int, float]]] = {}
    for dataset in PHASE_DATASETS:
        _, groups, _ = load_phases(sources, dataset)
        for g in groups:
            label = f"phase {_phase_number(g.recipe)}" if g.recipe in _phase_names(groups) else g.recipe
            points.setdefault(dataset, []).append((label, g.params, g.mean))
    for s in shipped_models(sources):
        points.setdefault(s.dataset, []).append(
            (s.recipe, int(s.result["params"]["trainable"]), float(s.result["test"]["accuracy"])))
    return points


def _phase_names(groups: Sequence[Group]) -> set[str]:
    return {g.recipe for g in groups if _PHASE_NAME.match(g.recipe)}


def pareto_front(points: Sequence[tuple[str, int, float]]) -> list[tuple[str, int, float]]:
    """The points no other point beats on both fewer parameters and higher accuracy, by parameters."""
    front = []
    for p in sorted(points, key=lambda p: (p[1], -p[2])):
        if not front or p[2] > front[-1][2]:
            front.append(p)
    return front


def plot_pareto(points: dict[str, list[tuple[str, int, float]]], path: Path) -> bool:
    if not points:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(points), figsize=(5.5 * len(points), 4.2), squeeze=False)
    for ax, (dataset, pts) in zip(axes[0], sorted(points.items())):
        ax.scatter([p[1] for p in pts], [100 * p[2] for p in pts], color="tab:blue", zorder=3)
        front = pareto_front(pts)
        ax.step([p[1] for p in front], [100 * p[2] for p in front], where="post", color="tab:orange",
                label="Pareto front", zorder=2)
        for label, params, acc in pts:
            ax.annotate(label, (params, 100 * acc), textcoords="offset points", xytext=(4, 3), fontsize=7)
        if max(p[1] for p in pts) > 3 * min(p[1] for p in pts):
            ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("final-epoch test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def pareto_markdown(sources: Sources, image: str | None) -> str:
    if image is None:
        return (f"*{NOT_MEASURED.capitalize()}*: no phase results (`{sources.rel(sources.phases)}`) and no "
                f"shipped results (`{sources.rel(sources.weights)}`) are committed yet.\n")
    return (f"![Final-epoch test accuracy against trainable parameters]({image})\n\n"
            f"Every phase recipe (mean over seeds) and every shipped model; the orange staircase joins the "
            f"recipes that no other recipe beats with fewer parameters. Sources: "
            f"`{sources.rel(sources.phases)}/*_phases.json`, `{sources.rel(sources.weights)}/*.json`.\n")


def curves_markdown(sources: Sources, out: Path) -> str:
    from keras_effcnn.plots import plot_history

    parts = []
    for s in shipped_models(sources):
        if not s.history:
            continue
        name = f"curves_{s.recipe}.png"
        plot_history(s.history, out / name, title=f"{s.recipe} (seed {s.result['recipe'].get('seed', 0)})")
        parts.append(f"### `{s.recipe}`\n\n![Training curves of {s.recipe}]({name})\n\n"
                     f"{_source_line(s.source, s.result.get('command'))}\n")
    if not parts:
        return (f"*{NOT_MEASURED.capitalize()}*: no shipped training result with a history is committed yet "
                f"(`{sources.rel(sources.weights)}/*.json`; `keras-effcnn train` writes `history.json` "
                "beside `results.json`).\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- development runs


def development_markdown(sources: Sources) -> str:
    """One row per ``recipes/develop.py`` run: the change against its base recipe and the validation accuracy.

    Older files of that folder (trained on the full training set and read on test, before
    development moved to a validation split) are listed apart, as such.
    """
    folder = sources.phases / "development"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return f"*{NOT_MEASURED.capitalize()}* (no `{sources.rel(folder)}/*.json` committed yet).\n"
    rows, on_test = [], []
    for path in files:
        run = read_json(path)
        if "final_val_accuracy" not in run:
            on_test.append(f"`{path.name}`")
            continue
        changes = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in sorted(run["changes"].items())) or "none"
        rows.append([f"`{path.stem}`", f"`{run['base_recipe']}`", changes, f"{run['validation_images']:,}",
                     pct(float(run["final_val_accuracy"])), f"{run['train_wall_s']:,.0f}",
                     f"{run['train_cpu_s']:,.0f}", f"{run['load_average_start'][0]:.1f}", run["commit"][:9]])
    text = ""
    if rows:
        text += markdown_table(["run", "base recipe", "changes", "val images", "final-epoch val acc.",
                                "train wall s", "train CPU s", "load at start", "commit"], rows,
                               align="lllrrrrrl")
        text += (f"\nWritten by `python recipes/develop.py` into `{sources.rel(folder)}/` (each file holds the "
                 "command, the per-epoch validation accuracy and the machine). The test set is not evaluated.\n")
    if on_test:
        text += ("\nEarlier development runs, trained on the full training set and read on the test set (before "
                 f"development moved to a validation split): {', '.join(on_test)}.\n")
    return text


# ----------------------------------------------------------------------------- benchmarks and headline


def benchmarks_markdown(sources: Sources) -> str:
    files = sorted(sources.benchmarks.glob("*.md")) if sources.benchmarks.is_dir() else []
    if not files:
        return f"*{NOT_MEASURED.capitalize()}* (no `{sources.rel(sources.benchmarks)}/*.md` committed yet).\n"
    parts = []
    for path in files:
        body = path.read_text()
        # Demote the file's headings below this page's section.
        body = re.sub(r"^(#{1,4}) ", lambda m: "#" * min(6, len(m[1]) + 3) + " ", body, flags=re.M)
        parts.append(f"### `{sources.rel(path)}`\n\n{body.strip()}\n")
    return "\n".join(parts)


def headline_markdown(sources: Sources) -> str:
    """The README's results block: one row per shipped model."""
    shipped = shipped_models(sources)
    if not shipped:
        return (f"Headline results are {NOT_MEASURED}: they appear here once the shipped weights' results "
                f"(`keras_effcnn/weights/*.json`) are committed (`python docs/make_figures.py --readme README.md`).\n")
    rows = []
    for s in shipped:
        report = s.reports.get("int8")
        evaluation = (report[0].get("evaluation") or {}) if report else {}
        rows.append([f"`{s.recipe}`", s.dataset, f"{int(s.result['params']['trainable']):,}",
                     f"{int(s.result['macs']):,}", pct(float(s.result["test"]["accuracy"])),
                     f"{report[0]['size_bytes'] / 1000:.1f} KB" if report else NOT_MEASURED,
                     pct(float(evaluation["accuracy"])) if "accuracy" in evaluation else NOT_MEASURED])
    table = markdown_table(["recipe", "dataset", "params", "MACs", "final-epoch test acc.", "int8 size",
                            "int8 test acc."], rows, align="llrrrrr")
    sources_text = "; ".join(_source_line(s.source, s.result.get("command")).rstrip(".") for s in shipped)
    return (table + f"\nFinal-epoch test accuracy. Generated by `python docs/make_figures.py --readme README.md`. "
            f"{sources_text}.\n")


def update_readme(path: Path, block: str) -> bool:
    """Replaces the text between the results markers; returns whether the file changed."""
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} has no {README_START} ... {README_END} block to fill")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{block.rstrip()}\n{README_END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


# ----------------------------------------------------------------------------- main


def make_all(out: Path, sources: Sources | None = None, zoo_rows: Sequence[dict] | None = None) -> list[Path]:
    """Writes every fragment and plot into ``out``; returns the files written."""
    sources = sources or Sources()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()  # a plot whose results file was removed must not linger
    written = {}
    for dataset in PHASE_DATASETS:
        _, groups, _ = load_phases(sources, dataset)
        text = phases_markdown(sources, dataset)
        image = f"phases_{dataset}.png"
        if plot_phases(groups, out / image, f"{dataset}: phase by phase"):
            text += f"\n![{dataset} phase by phase]({image})\n"
        written[f"phases_{dataset}.md"] = text
    for key in TECHNIQUES:
        written[f"technique_{key}.md"] = technique_markdown(sources, key)
    written["pareto.md"] = pareto_markdown(
        sources, "pareto.png" if plot_pareto(pareto_points(sources), out / "pareto.png") else None)
    written["curves.md"] = curves_markdown(sources, out)
    written["zoo.md"] = zoo_markdown(sources, zoo_rows)
    written["benchmarks.md"] = benchmarks_markdown(sources)
    written["development.md"] = development_markdown(sources)
    written["headline.md"] = headline_markdown(sources)
    for name, text in written.items():
        (out / name).write_text(text)
    return sorted(out / name for name in written) + sorted(out.glob("*.png"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the fragments and plots")
    parser.add_argument("--readme", default=None, help="also fill the results block of this README")
    args = parser.parse_args(argv)
    files = make_all(Path(args.out))
    if args.readme:
        changed = update_readme(Path(args.readme), (Path(args.out) / "headline.md").read_text())
        print(f"{args.readme}: {'updated' if changed else 'up to date'}")
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

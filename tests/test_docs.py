"""The docs: the Sphinx build (offline, warnings are errors) and the results generator.

``docs/make_figures.py`` is tested on synthetic results files whose expected tables
are computed here by hand (means, paired differences, the Pareto front), and on
empty folders, where every fragment must say "not yet measured".
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
make_figures = importlib.util.module_from_spec(_spec)
sys.modules["make_figures"] = make_figures  # dataclasses look their module up there
_spec.loader.exec_module(make_figures)

PAGES = ["index", "getting_started", "zoo", "results", "api", "techniques/index"] + [
    f"techniques/{key}" for key in make_figures.TECHNIQUES]
# Public names of docs/architecture.md that the API reference must document.
API_NAMES = [
    "keras_effcnn.layers.BlurPool2D", "keras_effcnn.layers.SqueezeExcite", "keras_effcnn.layers.ConvBNAct",
    "keras_effcnn.layers.DepthwiseSeparableBlock", "keras_effcnn.schedules.CyclicalLearningRate",
    "keras_effcnn.schedules.OneCycle", "keras_effcnn.callbacks.cyclical.CyclicalLR",
    "keras_effcnn.callbacks.lr_finder.LRFinder", "keras_effcnn.callbacks.swa.SWA", "keras_effcnn.sam.SAMModel",
    "keras_effcnn.augment.mixup", "keras_effcnn.augment.cutout", "keras_effcnn.augment.random_crop_flip",
    "keras_effcnn.data.load", "keras_effcnn.models.build", "keras_effcnn.models.list_models",
    "keras_effcnn.models.count_params", "keras_effcnn.models.count_macs", "keras_effcnn.recipes.mnist_1500",
    "keras_effcnn.recipes.cifar10_140k", "keras_effcnn.recipes.Recipe", "keras_effcnn.export.to_tflite",
]


# ----------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html")
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(DOCS), str(out)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    warnings = [line for line in proc.stderr.splitlines()
                if ("WARNING" in line or "ERROR" in line) and "absl" not in line]
    assert proc.returncode == 0, "sphinx -W failed:\n" + "\n".join(warnings or proc.stderr.splitlines()[-30:])
    return out


def test_every_page_is_built(html):
    missing = [page for page in PAGES if not (html / f"{page}.html").is_file()]
    assert not missing
    for guide in ("layers", "techniques", "data", "tuning", "android", "reliability", "architecture"):
        if (DOCS / f"{guide}.md").exists():
            assert (html / f"{guide}.html").is_file(), f"docs/{guide}.md is not in the toctree"


def test_api_reference_documents_the_public_names(html):
    page = (html / "api.html").read_text()
    missing = [name for name in API_NAMES if f'id="{name}"' not in page]
    assert not missing, f"not in the API reference: {missing}"
    # Markdown fences in docstrings become code blocks, not stray backticks.
    assert "```" not in page
    assert "keras-effcnn train" in page  # the CLI's --help


def test_zoo_page_shows_the_live_parameter_counts(html):
    from keras_effcnn import models

    page = (html / "zoo.html").read_text()
    for name in models.list_models():
        trainable = models.count_params(models.build(name))["trainable"]
        assert f'<span class="pre">{name}</span>' in page
        assert f">{trainable:,}<" in page, f"{name}: {trainable:,} trainable parameters not in the zoo table"
        paper = models.get_spec(name).paper_params
        if paper and paper != trainable:  # a count that differs from the paper is explained on the page
            assert f"the paper states {paper:,} parameters" in page and f"has {trainable:,}" in page, name


# ----------------------------------------------------------------------------- make_figures on synthetic results


def _phase_rows(accuracies: dict[str, dict[int, float]], epochs: int = 15) -> dict:
    rows = [{"recipe": name, "description": f"about {name}", "seed": seed, "epochs": epochs, "params": 1000 + i,
             "macs": 5000 + i, "test_accuracy": acc, "wall_time_s": 10.0 * (i + 1), "commit": "abc"}
            for i, (name, per_seed) in enumerate(accuracies.items()) for seed, acc in per_seed.items()]
    return {"command": "python recipes/reproduce.py --dataset mnist --seeds 0 1", "machine": "test", "rows": rows}


@pytest.fixture
def sources(tmp_path) -> "make_figures.Sources":
    s = make_figures.Sources(phases=tmp_path / "phases", weights=tmp_path / "weights",
                             benchmarks=tmp_path / "benchmarks")
    for d in (s.phases, s.weights, s.benchmarks):
        d.mkdir()
    return s


ACC = {
    "mnist_phase1_baseline": {0: 0.9800, 1: 0.9820},
    "mnist_phase2_depthwise_gap": {0: 0.9850, 1: 0.9830},
    "mnist_phase5_cyclical_lr": {0: 0.9900, 1: 0.9910, 2: 0.9905},
    "mnist_phase6_mixup": {0: 0.9920, 1: 0.9890},
}


def test_phase_table_means_and_paired_changes(sources):
    (sources.phases / "mnist_phases.json").write_text(json.dumps(_phase_rows(ACC)))
    text = make_figures.phases_markdown(sources, "mnist")
    lines = {line.split("|")[2].strip(" `"): line for line in text.splitlines() if "`mnist_phase" in line}
    assert set(lines) == set(ACC)
    five = ACC["mnist_phase5_cyclical_lr"]
    assert f"{100 * statistics.fmean(five.values()):.2f} ± {100 * statistics.stdev(five.values()):.2f} %" \
        in lines["mnist_phase5_cyclical_lr"]
    # Phase 6 adds Mixup to phase 5: paired over the seeds both ran (0 and 1, not 2).
    six = ACC["mnist_phase6_mixup"]
    delta = 100 * statistics.fmean(six[s] - five[s] for s in (0, 1))
    assert f"{delta:+.2f} pp vs. phase 5" in lines["mnist_phase6_mixup"]
    one, two = ACC["mnist_phase1_baseline"], ACC["mnist_phase2_depthwise_gap"]
    assert f"{100 * statistics.fmean(two[s] - one[s] for s in (0, 1)):+.2f} pp vs. phase 1" \
        in lines["mnist_phase2_depthwise_gap"]
    assert "vs. phase" not in lines["mnist_phase1_baseline"]
    assert "python recipes/reproduce.py --dataset mnist --seeds 0 1" in text


def test_development_table_reads_validation_runs_and_marks_older_test_runs(sources):
    folder = sources.phases / "development"
    folder.mkdir()
    run = {"base_recipe": "cifar10_140k", "changes": {"epochs": 15, "model_options": {"blur_padding": "zero"}},
           "validation_images": 5000, "final_val_accuracy": 0.85517, "train_wall_s": 661.6, "train_cpu_s": 1123.4,
           "load_average_start": [1.08, 0.9, 0.8], "commit": "b42a930fbe54233bf"}
    (folder / "fast_e15.json").write_text(json.dumps(run))
    (folder / "old_v1.json").write_text(json.dumps({"recipe": {}, "test": {"accuracy": 0.99}}))
    text = make_figures.development_markdown(sources)
    (row,) = [line for line in text.splitlines() if line.startswith("| `fast_e15`")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["`fast_e15`", "`cifar10_140k`", '`epochs=15`, `model_options={"blur_padding": "zero"}`',
                     "5,000", "85.52 %", "662", "1,123", "1.1", "b42a930fb"]
    assert "`old_v1.json`" in text and "read on the test set" in text
    assert "old_v1" not in row


def test_baseline_is_the_phase_that_differs_least():
    groups = make_figures.phase_groups(_phase_rows(ACC))
    by_name = {g.recipe: g for g in groups}
    # Phase 6 is phase 5 plus Mixup: one field apart, although phase 2 is also earlier.
    comparison = make_figures.baseline_for(by_name["mnist_phase6_mixup"], groups)
    assert comparison.baseline.recipe == "mnist_phase5_cyclical_lr"
    assert comparison.changed == ["mixup_alpha"]
    assert comparison.seeds == [0, 1]
    # Runs of different lengths are never compared.
    other = make_figures.phase_groups(_phase_rows({"mnist_phase5_cyclical_lr": {0: 0.99}}, epochs=3))
    assert make_figures.baseline_for(by_name["mnist_phase6_mixup"], other) is None


def test_technique_fragment_reports_the_paired_change(sources):
    (sources.phases / "mnist_phases.json").write_text(json.dumps(_phase_rows(ACC)))
    text = make_figures.technique_markdown(sources, "mixup")
    six, five = ACC["mnist_phase6_mixup"], ACC["mnist_phase5_cyclical_lr"]
    assert f"**{100 * statistics.fmean(six[s] - five[s] for s in (0, 1)):+.2f} pp**" in text
    assert f"{100 * statistics.fmean(five[s] for s in (0, 1)):.2f} %" in text
    assert "mixup_alpha" in text
    assert make_figures.NOT_MEASURED in make_figures.technique_markdown(sources, "sam").lower()


def test_nothing_measured_says_so_and_plots_nothing(sources, tmp_path):
    out = tmp_path / "generated"
    rows = [{"model": "effcnn_mnist", "dataset": "mnist", "trainable": 10, "non_trainable": 2, "total": 12,
             "macs": 99, "paper_params": None}]
    files = make_figures.make_all(out, sources, zoo_rows=rows)
    assert not list(out.glob("*.png"))
    for name in ["phases_mnist.md", "phases_cifar10.md", "pareto.md", "curves.md", "benchmarks.md",
                 "headline.md"] + [f"technique_{k}.md" for k in make_figures.TECHNIQUES]:
        assert make_figures.NOT_MEASURED in (out / name).read_text().lower(), name
        assert out / name in files
    assert "| `effcnn_mnist` | mnist | 10 | 12 |  | 99 |" in (out / "zoo.md").read_text()


def test_shipped_results_fill_the_zoo_curves_and_headline(sources, tmp_path):
    from keras_effcnn import recipes

    recipe = recipes.get_recipe("mnist_1500")
    history = {"loss": [1.0, 0.5, 0.3], "accuracy": [0.7, 0.9, 0.95]}
    (sources.weights / "mnist_1500.json").write_text(json.dumps({
        "recipe": recipe.to_dict(), "test": {"accuracy": 0.98765, "loss": 0.1}, "params": {"trainable": 1494},
        "macs": 211632, "history": history, "command": "keras-effcnn train mnist_1500 --seed 0"}))
    (sources.weights / "mnist_1500_int8.report.json").write_text(json.dumps({
        "path": "mnist_1500_int8.tflite", "quantize": "int8", "size_bytes": 17832,
        "evaluation": {"accuracy": 0.9861, "latency_ms": 0.0456}}))
    (sources.weights / "unrelated.json").write_text(json.dumps({"something": 1}))
    rows = [{"model": "effcnn_mnist", "dataset": "mnist", "trainable": 1494, "non_trainable": 216, "total": 1710,
             "macs": 211632, "paper_params": None},
            {"model": "paper_mnist", "dataset": "mnist", "trainable": 1560, "non_trainable": 126, "total": 1686,
             "macs": 253782, "paper_params": 1560}]
    zoo = make_figures.zoo_markdown(sources, rows)
    effcnn = next(line for line in zoo.splitlines() if line.startswith("| `effcnn_mnist`"))
    for cell in ("`mnist_1500`", "98.77 %", "17.8 KB", "98.61 %", "0.046 ms"):
        assert cell in effcnn
    paper = next(line for line in zoo.splitlines() if line.startswith("| `paper_mnist`"))
    assert "1,560 | 253,782" in paper and paper.count(make_figures.NOT_MEASURED) == 4
    assert "keras-effcnn train mnist_1500 --seed 0" in zoo

    out = tmp_path / "generated"
    make_figures.make_all(out, sources, zoo_rows=rows)
    assert (out / "curves_mnist_1500.png").stat().st_size > 1000
    assert (out / "pareto.png").stat().st_size > 1000
    headline = (out / "headline.md").read_text()
    assert "| `mnist_1500` | mnist | 1,494 | 211,632 | 98.77 % | 17.8 KB | 98.61 % |" in headline


def test_pareto_front_keeps_only_undominated_points():
    points = [("a", 100, 0.90), ("b", 200, 0.95), ("c", 300, 0.93), ("d", 50, 0.80), ("e", 200, 0.91),
              ("f", 400, 0.97)]
    front = make_figures.pareto_front(points)
    assert [p[0] for p in front] == ["d", "a", "b", "f"]
    for name, params, acc in points:
        dominated = any(p2 <= params and a2 >= acc and (p2, a2) != (params, acc) for _, p2, a2 in points)
        assert (name in [p[0] for p in front]) == (not dominated)


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{make_figures.README_START}\nold\n{make_figures.README_END}\n\nrest\n")
    assert make_figures.update_readme(readme, "| new |\n")
    assert readme.read_text() == (f"# title\n\n{make_figures.README_START}\n| new |\n{make_figures.README_END}"
                                  "\n\nrest\n")
    assert not make_figures.update_readme(readme, "| new |\n")
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="results:start"):
        make_figures.update_readme(readme, "x")


def test_readme_results_block_matches_the_results_files():
    text = (ROOT / "README.md").read_text()
    # The README states results: its block must exist (a missing block would hide stale figures).
    assert make_figures.README_START in text and make_figures.README_END in text, "README.md lost its results block"
    block = text.split(make_figures.README_START, 1)[1].split(make_figures.README_END, 1)[0]
    expected = make_figures.headline_markdown(make_figures.Sources())
    assert block.strip() == expected.strip(), "README's results are stale: python docs/make_figures.py --readme README.md"

"""recipes/reproduce.py and the phase ladders it runs: one technique per row, rows kept, runs resumable."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from keras_effcnn import recipes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import reproduce  # noqa: E402

IGNORED = {"name", "description"}


def _changed(name: str, other: str) -> set[str]:
    a = dataclasses.asdict(recipes.get_recipe(name))
    b = dataclasses.asdict(recipes.get_recipe(other))
    return {key for key in a if key not in IGNORED and a[key] != b[key]}


def test_cifar10_phases_add_one_technique_per_row():
    names = reproduce.phase_recipes("cifar10")
    assert [n.split("_")[1] for n in names] == [f"phase{k}" for k in range(1, 10)]
    # Phases 1-4 are cumulative.
    assert _changed("cifar10_phase2_blurpool", "cifar10_phase1_baseline") == {"model_options"}
    assert recipes.get_recipe("cifar10_phase1_baseline").model_options == {"blurpool": False, "se_ratio": None}
    assert recipes.get_recipe("cifar10_phase2_blurpool").model_options == {"se_ratio": None}
    assert _changed("cifar10_phase3_se", "cifar10_phase2_blurpool") == {"model_options"}
    assert _changed("cifar10_phase4_onecycle", "cifar10_phase3_se") == {"schedule", "learning_rate"}
    # Phases 5-9 each add one training technique to phase 4.
    added = {"cifar10_phase5_mixup": "mixup_alpha", "cifar10_phase6_cutout": "cutout_length",
             "cifar10_phase7_label_smoothing": "label_smoothing", "cifar10_phase8_swa": "swa_start",
             "cifar10_phase9_sam": "sam_rho"}
    for name, field in added.items():
        assert _changed(name, "cifar10_phase4_onecycle") == {field}, name
    # The docs say phase 7 is the flagship recipe at 30 epochs without Cutout.
    assert _changed("cifar10_phase7_label_smoothing", "cifar10_140k") == {"epochs", "cutout_length"}
    assert recipes.get_recipe("cifar10_140k").cutout_length == recipes.get_recipe("cifar10_phase6_cutout").cutout_length
    assert set(names) <= set(reproduce.PAPER_TEST_ACCURACY)  # ordered in the table


def test_smoke_run_writes_a_row_keeps_it_and_checkpoints_the_run(data_dir, tmp_path):
    argv = ["--dataset", "cifar10", "--only", "cifar10_phase1_baseline", "--subset", "256", "--epochs", "1",
            "--data-dir", str(data_dir), "--out", str(tmp_path / "out"), "--checkpoints", str(tmp_path / "ck")]
    assert reproduce.main(argv) == 0
    doc = json.loads((tmp_path / "out" / "cifar10_phases.json").read_text())
    (row,) = doc["rows"]
    assert (row["recipe"], row["seed"], row["epochs"], row["subset"]) == ("cifar10_phase1_baseline", 0, 1, 256)
    assert 0.0 <= row["test_accuracy"] <= 1.0 and row["commit"]
    assert row["resumed_from"] is None  # a fresh run: its times are the whole run's
    # CPU-seconds of all the process's threads: positive, at most wall time x cores.
    assert 0.0 < row["cpu_time_s"] <= row["wall_time_s"] * (os.cpu_count() or 1) + 1.0
    assert "| CPU time per run (s) |" in (tmp_path / "out" / "cifar10_phases.md").read_text()
    assert (tmp_path / "ck" / "cifar10" / "cifar10_phase1_baseline-seed0-e1-subset256" / "checkpoints").is_dir()
    assert (tmp_path / "out" / "models" / "cifar10_phase1_baseline-seed0-e1.weights.h5").is_file()
    # A second call finds the row and trains nothing.
    assert reproduce.main(argv) == 0
    assert len(json.loads((tmp_path / "out" / "cifar10_phases.json").read_text())["rows"]) == 1


def test_subset_runs_may_not_write_into_the_committed_results(data_dir):
    with pytest.raises(SystemExit):
        reproduce.main(["--dataset", "cifar10", "--subset", "256", "--data-dir", str(data_dir)])


def test_table_marks_the_times_of_resumed_runs(tmp_path):
    # A resumed run's TrainResult times count from its restart: the table must not pass them off as whole runs.
    def row(recipe, seed, resumed_from):
        return {"recipe": recipe, "description": "d", "seed": seed, "epochs": 30, "params": 1, "macs": 1,
                "test_accuracy": 0.9, "wall_time_s": 100.0, "cpu_time_s": 180.0, "commit": "abcdef12",
                "resumed_from": resumed_from}
    doc = {"command": "c", "machine": "m",
           "rows": [row("cifar10_phase1_baseline", 0, None), row("cifar10_phase2_blurpool", 0, "ck/ckpt-e000003"),
                    {k: v for k, v in row("cifar10_phase3_se", 0, None).items() if k != "resumed_from"}]}
    reproduce.write_table(doc, tmp_path / "t.md")
    lines = {line.split(" | ")[0].strip("| "): line for line in (tmp_path / "t.md").read_text().splitlines()
             if line.startswith("| cifar10_phase")}
    assert "| 100 (resumed) | 180 (resumed) |" in lines["cifar10_phase2_blurpool"]
    assert "(resumed)" not in lines["cifar10_phase1_baseline"] and "(resumed)" not in lines["cifar10_phase3_se"]

"""benchmarks/time_to_accuracy.py: the summary statistics its tables and the README quote."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import time_to_accuracy  # noqa: E402


def _run(seed, final, hit):
    return {"recipe": "r", "seed": seed, "final_test_accuracy": final, "train_wall_s": 100.0 + seed,
            "train_cpu_s": 150.0 + seed, "targets": {"0.9920": hit}}


def test_summary_counts_a_missed_target_as_infinitely_slow_and_averages_every_seed():
    runs = [_run(0, 0.9930, {"wall_s": 500.0, "cpu_s": 800.0}), _run(1, 0.9926, {"wall_s": 1150.0, "cpu_s": 1196.0}),
            _run(2, 0.9914, None)]
    row = time_to_accuracy.summarize(runs)["r"]
    finals = [0.9930, 0.9926, 0.9914]
    assert row["final_test_accuracy_mean"] == np.mean(finals)
    assert row["final_test_accuracy_median"] == np.median(finals) and row["final_test_accuracy_min"] == min(finals)
    target = row["targets"]["0.9920"]
    assert target["reached"] == "2/3"
    assert target["wall_s_median"] == 1150.0 and target["wall_s_worst"] is None  # median of (500, 1150, inf)
    assert target["cpu_s_median"] == 1196.0 and target["cpu_s_worst"] is None
    table = time_to_accuracy.to_markdown({"command": "c", "machine": "m", "summary": {"r": row}})
    assert "| 1,150 / not reached | 1,196 / not reached | 99.23 % | 99.26 % (99.14 %) | n/a |" in table

"""benchmarks/robustness_seeds.py: per-group means and spreads of robustness reports."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import robustness_seeds  # noqa: E402


def _row(group, clean, noise, bright, shift1):
    return {"group": group, "weights": f"w{clean}", "clean_accuracy": clean,
            "corruption_accuracy": {"gaussian_noise": {"1": noise[0], "2": noise[1]},
                                    "brightness": {"1": bright[0], "2": bright[1]}},
            "mean_corruption_accuracy": float(np.mean(noise + bright)), "shift_consistency": {"1": shift1}}


def test_group_rows_are_the_mean_and_sample_sd_of_their_models():
    rows = [_row("a", 0.99, [0.9, 0.8], [0.7, 0.5], 0.98), _row("a", 0.97, [0.8, 0.8], [0.9, 0.9], 0.96),
            _row("b", 0.95, [0.5, 0.5], [0.5, 0.5], 0.90)]
    text = robustness_seeds.to_markdown({"title": "t", "command": "c", "commit": "x", "date_utc": "d",
                                         "n_images": 10, "rows": rows})
    group_a = next(line for line in text.splitlines() if line.startswith("| a | 2 model(s)"))
    cells = [c.strip() for c in group_a.strip("|").split("|")][2:]
    # clean, gaussian_noise (mean over severities), brightness, all corruptions, shift k=1
    expected = [[0.99, 0.97], [0.85, 0.8], [0.6, 0.9], [0.725, 0.85], [0.98, 0.96]]
    assert cells == [f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" for v in expected]
    group_b = next(line for line in text.splitlines() if line.startswith("| b | 1 model(s)"))
    assert "±" not in group_b  # one model: no spread
    assert text.count("| a | `w") == 2 and text.count("| b | `w") == 1  # every model listed

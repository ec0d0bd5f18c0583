"""The ``keras-effcnn`` CLI: train -> files on disk -> evaluate agrees; bad input -> one clear line."""

from __future__ import annotations

import json

import pytest

from keras_effcnn import cli


def test_train_then_evaluate(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "mnist_1500", "--epochs", "1", "--subset", "3000", "--batch-size", "64",
                   "--data-dir", str(data_dir), "--out", str(out), "--quiet"])
    assert rc == 0
    for name in ("model.keras", "model.weights.h5", "history.json", "results.json", "recipe.json", "curves.png"):
        assert (out / name).exists(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["epochs"] == 1 and results["params"]["trainable"] == 1_494
    assert "--subset 3000" in results["command"]
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 1

    # `evaluate` on the saved file reproduces the test accuracy that `train` recorded.
    metrics = tmp_path / "m.json"
    rc = cli.main(["evaluate", str(out / "model.keras"), "--data-dir", str(data_dir), "--json", str(metrics)])
    assert rc == 0
    evaluated = json.loads(metrics.read_text())
    assert evaluated["dataset"] == "mnist" and evaluated["test_images"] == 10_000
    assert evaluated["keras_accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-4)


@pytest.mark.parametrize(
    "argv, message",
    [(["train", "mnist_9000"], "unknown recipe"),
     (["train", "mnist_1500", "--epochs", "0"], "epochs"),
     (["evaluate", "missing.keras"], "does not exist"),
     (["evaluate", "mnist_1500"], "--weights")],
)
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

"""The ``keras-effcnn`` CLI: train -> files on disk -> evaluate agrees; bad input -> one clear line."""

from __future__ import annotations

import json
import os

import pytest

from keras_effcnn import cli


def test_train_then_evaluate_then_resume(tmp_path, data_dir, capsys, monkeypatch):
    import keras

    from keras_effcnn import determinism

    # Op determinism is process-wide and irreversible: keep it out of the pytest process
    # (tests/test_resume.py runs the CLI with it, in subprocesses) but check the call.
    seeds = []

    def seed_only(seed):
        seeds.append(seed)
        keras.utils.set_random_seed(seed)

    monkeypatch.setattr(determinism, "set_determinism", seed_only)
    out = tmp_path / "run"
    argv = ["train", "mnist_1500", "--epochs", "1", "--subset", "3000", "--batch-size", "64", "--seed", "3",
            "--data-dir", str(data_dir), "--out", str(out), "--quiet", "--save-every-steps", "20"]
    rc = cli.main(argv)
    assert rc == 0 and seeds == [3]
    for name in ("model.keras", "model.weights.h5", "history.json", "results.json", "recipe.json", "curves.png"):
        assert (out / name).exists(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["epochs"] == 1 and results["params"]["trainable"] == 1_494
    assert "--subset 3000" in results["command"] and results["resumed_from"] is None
    # CPU-seconds of all threads: positive, and no more than the cores can give in the wall time.
    assert 0 < results["cpu_time_s"] <= results["wall_time_s"] * os.cpu_count() * 1.02 + 0.1
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 1
    # 47 batches: checkpoints after batches 20 and 40 and at the epoch end; the newest two are kept.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "ckpt-e000000-b0000040.npz", "ckpt-e000001-b0000000.npz"]

    # `evaluate` on the saved file reproduces the test accuracy that `train` recorded.
    metrics = tmp_path / "m.json"
    rc = cli.main(["evaluate", str(out / "model.keras"), "--data-dir", str(data_dir), "--json", str(metrics)])
    assert rc == 0
    evaluated = json.loads(metrics.read_text())
    assert evaluated["dataset"] == "mnist" and evaluated["test_images"] == 10_000
    assert evaluated["keras_accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-4)

    # The same command again resumes the finished run: no training, the same model and numbers.
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert f"resuming from {out / 'checkpoints' / 'ckpt-e000001-b0000000.npz'}" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert again["test"] == results["test"] and again["resumed_from"].endswith("ckpt-e000001-b0000000.npz")
    assert json.loads((out / "history.json").read_text()) == history

    # Checkpoints of another recipe are not resumed.
    assert cli.main(argv[:-2] + ["--batch-size", "32"] + argv[-2:]) == 2
    err = capsys.readouterr().err
    assert "different recipe (batch_size: 64 -> 32)" in err and "Traceback" not in err


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

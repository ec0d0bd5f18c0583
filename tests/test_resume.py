"""Resumable training: kill a real ``keras-effcnn train`` run with SIGKILL, restart it, compare.

The run is the real ``mnist_1500`` recipe (``effcnn_mnist``, one-cycle Nesterov
SGD, random shifts) on the first 1,024 MNIST training images, 2 epochs of 32
batches, through the CLI in subprocesses. Its data
pipeline (``keras_effcnn.data.load``) is epoch-pure, and the CLI turns on op
determinism, so the resumed run must end *bit-identical* to an uninterrupted one:
the tolerance asserted here is exact equality (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, STEPS = 2, 32  # 1,024 images in batches of 32


# ----------------------------------------------------------------------------- the CLI run


def _command(out: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "keras_effcnn.cli", "train", "mnist_1500", "--epochs", str(EPOCHS),
            "--subset", "1024", "--batch-size", "32", "--out", str(out), "--data-dir", str(data_dir),
            "--save-every-steps", "10", "--quiet"]


def _start(out: Path, data_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    return subprocess.Popen(_command(out, data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _finish(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    """SIGKILLs ``proc`` as soon as ``ready()`` holds (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _final_state(out: Path) -> dict[str, np.ndarray]:
    """Every array of the run's final checkpoint (model, optimizer) and of model.weights.h5."""
    arrays = {}
    with np.load(out / "checkpoints" / f"ckpt-e{EPOCHS:06d}-b0000000.npz", allow_pickle=False) as ckpt:
        arrays.update({k: ckpt[k] for k in ckpt.files if k != "__meta__"})
    with h5py.File(out / "model.weights.h5", "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(f"h5/{name}", obj[()]) if isinstance(obj, h5py.Dataset)
                     else None)
    return arrays


def test_cli_run_killed_mid_epoch_with_damaged_newest_checkpoint_resumes_bit_identical(tmp_path, data_dir):
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    ckpts = run_dir / "checkpoints"
    reference = _start(ref_dir, data_dir)  # runs alongside: results do not depend on timing

    # 1. SIGKILL mid-epoch 2, as soon as its first checkpoint (batch 8, global step 40) exists;
    #    the epoch-end checkpoint of epoch 1 is kept beside it (keep=2).
    first = _start(run_dir, data_dir)
    _kill_when(first, lambda: (ckpts / "ckpt-e000001-b0000008.npz").exists())
    names = sorted(p.name for p in ckpts.glob("ckpt-*.npz"))
    # keep=2 prunes the oldest right after each write: the kill may land before or after that.
    assert names[-1] == "ckpt-e000001-b0000008.npz" and len(names) in (2, 3), names
    previous = names[-2]
    assert not (run_dir / "model.keras").exists()

    # 2. Flip 64 bytes in the middle of the newest checkpoint: its CRC check fails and the
    #    resume falls back to the previous one (one more stretch of epoch 2 is trained again).
    newest = ckpts / names[-1]
    raw = bytearray(newest.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    newest.write_bytes(bytes(raw))

    # 3. The same command again resumes and finishes.
    resumed_out = _finish(_start(run_dir, data_dir))
    assert f"resuming from {ckpts / previous}" in resumed_out
    results = json.loads((run_dir / "results.json").read_text())
    assert Path(results["resumed_from"]).name == previous
    assert not list(ckpts.glob(".ckpt-*.tmp"))

    _finish(reference)
    ref_results = json.loads((ref_dir / "results.json").read_text())
    assert ref_results["resumed_from"] is None
    # Bit-identical: weights, BatchNorm statistics, optimizer slots and step, every epoch's
    # logs and the final test metrics.
    ref_state, state = _final_state(ref_dir), _final_state(run_dir)
    assert ref_state.keys() == state.keys() and len(state) > 40
    for key in ref_state:
        np.testing.assert_array_equal(ref_state[key], state[key], err_msg=key)
    history = json.loads((run_dir / "history.json").read_text())
    assert history == json.loads((ref_dir / "history.json").read_text())
    assert len(history["loss"]) == EPOCHS
    assert results["test"] == ref_results["test"] and results["test"]["accuracy"] > 0.3  # it did train


# ----------------------------------------------------------------------------- in-process


def _after_steps(n, action):
    """A callback that calls ``action()`` after the ``n``-th trained batch of this process."""
    import keras

    class AfterSteps(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps == n:
                action()

    return AfterSteps()


def _tiny_run(directory, interrupt_at=None, epochs=3):
    """A small in-process run on fixed-order data; ``interrupt_at`` raises after that many batches.

    Backend-neutral: on JAX the mid-epoch resume and the mid-epoch saves go through the
    stateless training state (tests run with KERAS_BACKEND=jax in CI too).
    """
    import keras
    import tensorflow as tf

    from keras_effcnn.callbacks.checkpoint import ResumableCheckpoint
    from keras_effcnn.callbacks.timeline import TestTimeline

    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, 40), 3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dropout(0.2), keras.layers.Dense(3)])
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=15)
    model.compile(keras.optimizers.SGD(schedule, momentum=0.9), keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=False)

    def interrupt():
        raise KeyboardInterrupt

    timeline = TestTimeline(tf.data.Dataset.from_tensor_slices((x[:20], y[:20])).batch(20))
    ckpt = ResumableCheckpoint(directory, save_every_steps=3, stateful=[timeline], verbose=0)
    # shuffle=False: every epoch has the same order, so the data are epoch-pure.
    model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[_after_steps(interrupt_at, interrupt), timeline, ckpt])
    return model, ckpt, timeline


@pytest.mark.backend_neutral
def test_in_process_resume_restores_optimizer_schedule_dropout_metrics_and_timeline(tmp_path):
    ref_model, ref, ref_timeline = _tiny_run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path / "run", interrupt_at=8)  # epoch 2, batch 3; last save at step 6 (batch 1)
    model, ckpt, timeline = _tiny_run(tmp_path / "run")
    assert (ckpt.resumed_from.epoch, ckpt.resumed_from.batch) == (1, 1)
    assert int(model.optimizer.iterations.numpy()) == 15
    for a, b in zip(ref_model.variables, model.variables):  # includes the dropout seed state
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert ckpt.history == ref.history  # epoch 2's metrics include its batch trained before the kill
    assert model._initial_epoch is None  # the next fit() on this model is not affected
    # The timeline continues: epoch 1's record is the first process's, the clock runs on.
    assert [r["epoch"] for r in timeline.records] == [1, 2, 3]
    assert [r["test_accuracy"] for r in timeline.records] == [r["test_accuracy"] for r in ref_timeline.records]
    walls = [r["train_wall_s"] for r in timeline.records]
    assert walls == sorted(walls) and walls[0] > 0

    # A finished run started again trains nothing and keeps its result and history.
    again_model, again, again_timeline = _tiny_run(tmp_path / "run")
    assert again.resumed_from.path.name == "ckpt-e000003-b0000000.npz"
    for a, b in zip(ref_model.variables, again_model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert again.history == ref.history
    assert again_timeline.records == timeline.records


@pytest.mark.backend_neutral
def test_load_weights_gives_the_model_of_the_checkpointed_epoch(tmp_path):
    import keras

    from keras_effcnn.callbacks.checkpoint import CheckpointError, list_checkpoints, load_weights

    trained, _, _ = _tiny_run(tmp_path / "run", epochs=2)
    x = np.random.default_rng(5).normal(size=(16, 6)).astype("float32")
    fresh = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dropout(0.2), keras.layers.Dense(3)])
    assert not np.allclose(fresh.predict(x, verbose=0), trained.predict(x, verbose=0))
    ckpt = load_weights(fresh, tmp_path / "run")  # the folder: its newest checkpoint, the end of epoch 2
    assert (ckpt.epoch, ckpt.batch) == (2, 0)
    # Equal weights; on JAX two models' compiled predict functions may round differently.
    np.testing.assert_allclose(fresh.predict(x, verbose=0), trained.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    earlier = [p for p in list_checkpoints(tmp_path / "run") if p.name != ckpt.path.name][-1]
    assert load_weights(fresh, earlier).path == earlier
    assert not np.allclose(fresh.predict(x, verbose=0), trained.predict(x, verbose=0))
    with pytest.raises(CheckpointError, match="no checkpoint files"):
        load_weights(fresh, tmp_path)
    other = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    with pytest.raises(CheckpointError, match="different model"):
        load_weights(other, ckpt)


@pytest.mark.backend_neutral
def test_a_recipe_builds_with_a_runs_checkpoint_as_its_weights(tmp_path):
    from keras_effcnn import recipes
    from keras_effcnn.callbacks.checkpoint import ResumableCheckpoint

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 32)
    model = recipes.build("mnist_1500")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[ResumableCheckpoint(tmp_path / "ck", verbose=0)])
    (tmp_path / "run").mkdir()
    (tmp_path / "ck").rename(tmp_path / "run" / "checkpoints")
    # The run folder, its checkpoints folder or one file, as --weights takes a .weights.h5.
    for weights in (tmp_path / "run", tmp_path / "run" / "checkpoints",
                    next((tmp_path / "run" / "checkpoints").glob("ckpt-*.npz"))):
        loaded = recipes.build("mnist_1500", weights=weights)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        recipes.build("mnist_1500", weights=tmp_path / "missing.weights.h5")


@pytest.mark.backend_neutral
def test_timeline_clock_accumulates_across_processes(monkeypatch):
    import types

    from keras_effcnn.callbacks import timeline
    from keras_effcnn.callbacks.timeline import TestTimeline

    # A clock the test moves by hand: exact values, no sleeping, no bound that a busy machine could break.
    clock = [100.0]
    monkeypatch.setattr(timeline, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    earlier = TestTimeline(None)
    earlier.on_train_begin()
    clock[0] += 0.05
    state = json.loads(json.dumps(earlier.get_state()))  # what a checkpoint stores
    assert state["records"] == [] and state["train_wall_s"] == pytest.approx(0.05)
    clock[0] = 500.0  # another process: its clock has nothing to do with the first one's
    later = TestTimeline(None)
    later.on_train_begin()
    later.set_state({"records": [{"epoch": 1, "train_wall_s": 3.0, "test_accuracy": 0.5}], "train_wall_s": 7.0})
    clock[0] += 0.05
    now = later.get_state()
    assert now["records"] == [{"epoch": 1, "train_wall_s": 3.0, "test_accuracy": 0.5}]
    assert now["train_wall_s"] == pytest.approx(7.05)


@pytest.mark.backend_neutral
def test_kill_inside_a_checkpoint_write_keeps_the_previous_ones(tmp_path, monkeypatch):
    from keras_effcnn.callbacks import checkpoint

    ref_model, ref, _ = _tiny_run(tmp_path / "ref")
    real_replace, calls = os.replace, [0]

    def dying_replace(src, dst):
        calls[0] += 1
        if calls[0] == 4:  # the temporary file is fully written, not yet renamed
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path / "run")  # dies in its 4th write (step 9: epoch 2, batch 4)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert sorted(p.name for p in (tmp_path / "run").glob("ckpt-*.npz")) == [
        "ckpt-e000001-b0000000.npz", "ckpt-e000001-b0000001.npz"]
    assert not list((tmp_path / "run").glob(".ckpt-*.tmp"))  # an exception cleans up after itself
    # SIGKILL does not: it leaves a (here, half-written) temporary, which the next start deletes.
    stale = tmp_path / "run" / ".ckpt-e000001-b0000004.npz.x1y2z3.tmp"
    stale.write_bytes((tmp_path / "run" / "ckpt-e000001-b0000001.npz").read_bytes()[:500])
    model, ckpt, _ = _tiny_run(tmp_path / "run")
    assert (ckpt.resumed_from.epoch, ckpt.resumed_from.batch) == (1, 1)
    assert not list((tmp_path / "run").glob(".ckpt-*.tmp"))
    for a, b in zip(ref_model.variables, model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert ckpt.history == ref.history


def test_set_determinism_repeats_a_run_exactly(data_dir):
    # Kernel determinism (op_determinism=True) is process-wide and irreversible, so it is
    # exercised in the CLI subprocesses above (bit-identical across processes); here the
    # seeding is checked in-process: two runs with array shuffling and a dropout head.
    import keras

    from keras_effcnn import models
    from keras_effcnn.determinism import set_determinism

    with np.load(data_dir / "mnist.npz") as d:
        x, y = d["x_train"][:512, ..., None] / np.float32(255), keras.utils.to_categorical(d["y_train"][:512], 10)
    runs = []
    for _ in range(2):
        set_determinism(3, op_determinism=False)
        model = models.build("paper_mnist", head_dropout=0.2)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.losses.CategoricalCrossentropy(from_logits=True),
                      jit_compile=False)
        history = model.fit(x, y, batch_size=64, epochs=2, shuffle=True, verbose=0).history["loss"]
        runs.append((history, [v.numpy() for v in model.variables]))
    (h1, w1), (h2, w2) = runs
    assert h1 == h2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert h1[1] < h1[0]  # it did train


def test_set_determinism_rejects_bad_arguments():
    from keras_effcnn.determinism import set_determinism

    with pytest.raises(ValueError, match="seed"):
        set_determinism(-1)
    with pytest.raises(ValueError, match="threads"):
        set_determinism(0, threads=0)


@pytest.mark.backend_neutral
def test_all_checkpoints_damaged_fails_with_clear_message(tmp_path):
    from keras_effcnn.callbacks.checkpoint import CheckpointError, latest_checkpoint, write_checkpoint

    for batch in (5, 10):
        path = write_checkpoint(tmp_path / f"ckpt-e000000-b{batch:07d}.npz", {"model/00000": np.arange(1000.0)},
                                {"format": 1, "epoch": 0, "batch": batch})
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with pytest.raises(CheckpointError, match=r"every checkpoint in .* is damaged(.|\n)*Delete"):
        latest_checkpoint(tmp_path)


@pytest.mark.backend_neutral
def test_checkpoint_round_trip_and_crc_detection(tmp_path):
    from keras_effcnn.callbacks.checkpoint import CheckpointError, list_checkpoints, read_checkpoint, write_checkpoint

    arrays = {"model/00000": np.arange(12, dtype="float32").reshape(3, 4), "model/00001": np.array(3, "int64")}
    path = write_checkpoint(tmp_path / "ckpt-e000002-b0000003.npz", arrays, {"format": 1, "epoch": 2, "batch": 3})
    ckpt = read_checkpoint(path)
    assert (ckpt.epoch, ckpt.batch) == (2, 3)
    for got, want in zip(ckpt.group("model"), arrays.values()):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    assert list_checkpoints(tmp_path) == [path]
    # One flipped byte inside a stored (uncompressed) array fails its CRC-32.
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("model/00000.npy")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + len(info.extra) + 100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="CRC"):
        read_checkpoint(path)


@pytest.mark.backend_neutral
def test_mismatched_model_is_refused(tmp_path):
    import keras

    from keras_effcnn.callbacks.checkpoint import CheckpointError, ResumableCheckpoint

    x, y = np.zeros((8, 4), "float32"), np.zeros((8, 2), "float32")

    def model(units):
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units), keras.layers.Dense(2)])
        m.compile("sgd", "mse")
        return m

    model(3).fit(x, y, epochs=1, verbose=0, callbacks=[ResumableCheckpoint(tmp_path, verbose=0)])
    with pytest.raises(CheckpointError, match="different model"):
        model(5).fit(x, y, epochs=1, verbose=0, callbacks=[ResumableCheckpoint(tmp_path, verbose=0)])


@pytest.mark.backend_neutral
@pytest.mark.parametrize("kwargs, match", [
    (dict(save_every_steps=0), "save_every_steps"),
    (dict(keep=1), "keep"),
    (dict(stateful=[object()]), "get_state"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    from keras_effcnn.callbacks.checkpoint import ResumableCheckpoint

    with pytest.raises(ValueError, match=match):
        ResumableCheckpoint(tmp_path, **kwargs)


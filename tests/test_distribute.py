"""Data-parallel training (keras_effcnn.distribute) against single-device training.

Each case runs in subprocesses (tests/distribute_worker.py): the number of devices is
fixed when a backend starts, so 2 logical CPU devices (TensorFlow: logical device
configuration; JAX: ``jax_num_cpu_devices``) and multi-process JAX (Gloo collectives
over 127.0.0.1) need fresh processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("distribute_worker.py")
ROOT = WORKER.parents[1]


def _env(backend):
    return dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT),
                JAX_PLATFORMS="cpu")


def _run(backend, *args, timeout=240):
    proc = subprocess.run([sys.executable, str(WORKER), *map(str, args)], env=_env(backend), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _group(arrays, prefix):
    return [arrays[k] for k in sorted(k for k in arrays.files if k.startswith(prefix + "/"))]


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_one_data_parallel_step_equals_the_single_device_step(backend, tmp_path):
    _run(backend, "step", tmp_path / "step.npz")
    with np.load(tmp_path / "step.npz") as r:
        assert int(r["replicas"]) == 2
        for name in ("sgd", "sam"):
            parallel, single = _group(r, f"parallel_{name}"), _group(r, f"single_{name}")
            assert len(parallel) == len(single) == 8  # conv, BN (4), dense
            for a, b in zip(parallel, single):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{backend} {name}")
        # The SAM replicas used the global eps (from the all-reduced gradient), not each its own:
        # per-replica eps (m-sharpness, m = replica batch = num_splits=2 on one device) differs.
        split = _group(r, "single_sam_split2")
        gap = max(float(np.max(np.abs(a - b))) for a, b in zip(_group(r, "parallel_sam"), split))
        assert gap > 1e-4


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, tag, ckpt, die_after=None):
    coordinator = f"127.0.0.1:{_free_port()}"
    outs = [tmp_path / f"{tag}{i}.npz" for i in range(2)]
    extra = [] if die_after is None else [die_after]
    procs = [subprocess.Popen([sys.executable, str(WORKER), "train", *map(str, [out, ckpt, coordinator, 2, i, *extra])],
                              env=_env("jax"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, out in enumerate(outs)]
    return procs, outs


def _weights(path):
    with np.load(path) as r:
        return int(r["resumed"]), [r[f"arr_{i}"] for i in range(len(r.files) - 1)]


@pytest.mark.slow  # seven subprocesses (~2 min on 2 busy cores)
def test_two_processes_train_identically_and_resume_after_one_is_killed(tmp_path):
    # Reference: one process, one device, the same global batches.
    _run("jax", "train", tmp_path / "single.npz", tmp_path / "ckpt_single")
    _, single = _weights(tmp_path / "single.npz")

    # 1. Two processes, uninterrupted: identical weights on both, equal to the single process.
    procs, outs = _two_processes(tmp_path, "full", tmp_path / "ckpt_full")
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    (_, w0), (_, w1) = _weights(outs[0]), _weights(outs[1])
    for a, b, s in zip(w0, w1, single):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, s, rtol=1e-5, atol=1e-6)

    # 2. Process 1 dies after 7 batches (epoch 2, batch 3); process 0 is then stuck in a
    #    collective and is killed too. Only process 0 wrote checkpoints (the last at step 6).
    ckpt = tmp_path / "ckpt_killed"
    procs, _ = _two_processes(tmp_path, "killed", ckpt, die_after=7)
    assert procs[1].wait(timeout=240) == 3
    try:
        procs[0].wait(timeout=10)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].wait()
    for p in procs:
        p.communicate()
    assert "ckpt-e000001-b0000002.npz" in {p.name for p in ckpt.glob("ckpt-*.npz")}

    # 3. Both restarted: both resume from process 0's checkpoint and end as the uninterrupted run.
    procs, outs = _two_processes(tmp_path, "resumed", ckpt)
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    for out in outs:
        resumed, weights = _weights(out)
        assert resumed == 102  # epoch 1 (0-based), batch 2
        for a, b in zip(weights, w0):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.backend_neutral
def test_bad_arguments_have_clear_errors():
    from keras_effcnn import distribute

    with pytest.raises(ValueError, match="devices"):
        distribute.data_parallel(devices=0)
    with pytest.raises(ValueError, match="coordinator"):
        distribute.data_parallel(num_processes=2)
    with pytest.raises(ValueError, match="process_id"):
        distribute.data_parallel(coordinator="127.0.0.1:1234", num_processes=2, process_id=2)


@pytest.mark.backend_neutral
def test_cli_multi_process_flags_are_checked_before_training(capsys):
    from keras_effcnn.cli import main

    assert main(["train", "mnist_1500", "--coordinator", "127.0.0.1:1234", "--num-processes", "2"]) == 2
    assert "process_id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "mnist_1500", "--devices", "0"])

"""Shared fixtures: where the real datasets live, and a quiet, seeded Keras."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("KERAS_EFFCNN_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Directory with mnist.npz / cifar10.npz (../shared/data beside the repo)."""
    d = _data_dir()
    if not (d / "mnist.npz").exists():
        pytest.fail(
            f"real datasets not found in {d}; set KERAS_EFFCNN_DATA_DIR to the folder "
            "holding mnist.npz and cifar10.npz"
        )
    return d


@pytest.fixture(autouse=True)
def _seed_and_clear():
    import keras

    keras.utils.set_random_seed(0)
    yield
    # free_memory=False skips a gc.collect() that costs ~0.2 s per test on this machine.
    keras.backend.clear_session(free_memory=False)


# ----------------------------------------------------------------------------- CPU time per test
# With KERAS_EFFCNN_TEST_TIMES=path.json every test's wall seconds and CPU seconds (this
# process and the subprocesses it waited for: notebook kernels, CLI runs, tuning workers)
# are written there. On a shared machine CPU seconds are the noise-robust figure; see
# docs/testing.md for how the CI budget is tracked with them.
_TIMES: dict[str, dict[str, float]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not os.environ.get("KERAS_EFFCNN_TEST_TIMES"):
        yield
        return
    import time

    t0, c0 = time.perf_counter(), os.times()
    yield
    t1, c1 = time.perf_counter(), os.times()
    cpu = sum(getattr(c1, f) - getattr(c0, f) for f in ("user", "system", "children_user", "children_system"))
    _TIMES[item.nodeid] = {"wall_s": round(t1 - t0, 3), "cpu_s": round(cpu, 3)}


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("KERAS_EFFCNN_TEST_TIMES")
    if path and _TIMES:
        import json

        Path(path).write_text(json.dumps(_TIMES, indent=1, sort_keys=True) + "\n")

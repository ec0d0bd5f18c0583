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

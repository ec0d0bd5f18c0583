"""The dataset registry: names, sources, errors (no TensorFlow).

The records themselves (image shape, mean/std, class names, sizes) are
:data:`keras_effcnn.presets.DATASETS`, shared with the zoo and the CLI.
"""

from __future__ import annotations

from keras_effcnn.layers._validation import check_choice
from keras_effcnn.presets import DATASETS, DatasetSpec

__all__ = ["DATASETS", "ENV_DATA_DIR", "ENV_TFDS_MANUAL_DIR", "NPZ_KEYS", "SOURCES", "DataFormatError",
           "DataNotFoundError", "DatasetSpec"]

ENV_DATA_DIR = "KERAS_EFFCNN_DATA_DIR"
ENV_TFDS_MANUAL_DIR = "KERAS_EFFCNN_TFDS_MANUAL_DIR"
SOURCES = ("auto", "local", "tfds", "keras")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataNotFoundError(FileNotFoundError):
    """No source could provide the dataset; the message lists what was tried and how to fix it."""


class DataFormatError(ValueError):
    """A dataset file or download exists but is unreadable or has the wrong content."""


def _spec(name: str) -> DatasetSpec:
    return DATASETS[check_choice("name", name, DATASETS)]


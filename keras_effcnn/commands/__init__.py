"""Sub-commands of the ``keras-effcnn`` CLI, one module each (``add_parser`` + ``run``)."""

from __future__ import annotations

import argparse
from pathlib import Path

_SHAPE_TO_DATASET = {(28, 28, 1): "mnist", (32, 32, 3): "cifar10"}


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--source``, shared by every command that reads a dataset."""
    parser.add_argument("--data-dir", default=None,
                        help="folder with mnist.npz / cifar10.npz (default: $KERAS_EFFCNN_DATA_DIR, else download)")
    parser.add_argument("--source", default="auto", choices=("auto", "local", "tfds", "keras"),
                        help="where to read the dataset from (default: auto)")


def load_model(name: str, weights: str | None = None):
    """A model from a ``.keras`` file or a recipe; returns ``(model, dataset or None)``.

    Args:
        name: a ``.keras`` path, a registered recipe name or a recipe ``.json``.
        weights: required for recipes (``"mnist"``, ``"cifar10"`` or a file).
    """
    import keras

    import keras_effcnn.layers  # noqa: F401  (registers the custom layers for safe loading)
    import keras_effcnn.sam  # noqa: F401  (registers SAMModel, the class of models trained with SAM)

    path = Path(name)
    if path.suffix == ".keras":
        if not path.exists():
            raise FileNotFoundError(f"model file {path} does not exist")
        return keras.saving.load_model(path, safe_mode=True, compile=False), None
    from keras_effcnn import recipes

    if weights is None:
        raise ValueError(f"{name!r} is a recipe: pass --weights (e.g. --weights mnist) or a .keras file")
    model = recipes.build(name, weights=weights)
    return model, model.training_plan.dataset


def guess_dataset(input_shape: tuple) -> str:
    """``"mnist"`` for 28x28x1 inputs, ``"cifar10"`` for 32x32x3; else ``ValueError``."""
    shape = tuple(int(d) for d in input_shape)
    if shape not in _SHAPE_TO_DATASET:
        raise ValueError(f"cannot tell the dataset from input shape {shape}; pass --dataset")
    return _SHAPE_TO_DATASET[shape]


def class_names(dataset: str) -> list[str]:
    """The dataset's class names, in label order (they travel with the ``.tflite`` file)."""
    from keras_effcnn import data

    return list(data.DATASETS[dataset].label_names)

"""Sub-commands of the ``keras-effcnn`` CLI, one module each (``add_parser`` + ``run``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from keras_effcnn import presets

#: ``--weights`` of the commands that take a recipe: one help text for all of them.
WEIGHTS_HELP = ("weights for a recipe: 'mnist', 'cifar10', a .weights.h5 / .keras file, or a run's checkpoint "
                "(its --out or checkpoints folder for the newest, or one ckpt-*.npz)")


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
    from keras_effcnn import models, recipes

    path = Path(name)
    if path.suffix == ".keras":
        model = models.load_model(path, compile=False)
        plan = getattr(model, "training_plan", None)
        # A fine-tuned copy with another head keeps its recipe but not the recipe's dataset.
        fits = plan is not None and model.output_shape[-1] == presets.get_dataset(plan.dataset).num_classes
        return model, plan.dataset if fits else None

    if weights is None:
        raise ValueError(f"{name!r} is a recipe: pass --weights (e.g. --weights mnist) or a .keras file")
    model = recipes.build(name, weights=weights)
    return model, model.training_plan.dataset


def guess_dataset(input_shape: tuple) -> str:
    """The dataset of a model's input shape (``keras_effcnn.presets.dataset_for_input_shape``)."""
    return presets.dataset_for_input_shape(input_shape)


def class_names(dataset: str) -> list[str]:
    """The dataset's class names, in label order (they travel with the ``.tflite`` file)."""
    return list(presets.get_dataset(dataset).label_names)

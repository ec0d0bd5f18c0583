"""Presets: one record per dataset and one per pretrained variant, as timm's pretrained configs.

Everything the package knows about a dataset before loading it (image shape,
per-channel mean/std, class names, sizes, where it downloads from) is one
:class:`DatasetSpec` in :data:`DATASETS`; everything it knows about a shipped
variant (its recipe, hence its builder and training plan; its dataset, hence
input shape, normalisation and labels; its weights file; its measured metrics)
is one :class:`Preset` in :data:`PRESETS`. This module imports neither
TensorFlow nor Keras, so the zoo, the data pipelines, the CLI and the export
code all read the same facts from here.

Example:

```python
import keras_effcnn

keras_effcnn.list_presets()                     # ['cifar10_140k', 'mnist_1500']
preset = keras_effcnn.presets.get_preset("cifar10")   # aliases name the dataset
preset.input_shape, preset.mean, preset.labels[:2], preset.metrics["test_accuracy"]
model = keras_effcnn.from_preset("cifar10_140k", num_classes=5)   # pretrained trunk, new head
```
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

__all__ = [
    "DATASETS",
    "PRESETS",
    "WEIGHTS_DIR",
    "DatasetSpec",
    "Preset",
    "dataset_for_input_shape",
    "from_preset",
    "get_dataset",
    "get_preset",
    "list_presets",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What is known about one dataset before loading it.

    Attributes:
        name: registry key (also the tfds name and the ``keras.datasets`` module).
        input_shape: ``(height, width, channels)`` of one image.
        num_classes: number of classes; labels are ``0..num_classes-1``.
        label_names: class names in label order.
        mean: per-channel mean of the training images in ``[0, 1]`` units.
        std: per-channel standard deviation of the training images in ``[0, 1]`` units.
        filename: file name in a local data folder.
        sha256: checksum of the reference copy of ``filename`` (None if unknown);
            used only by ``load_arrays(..., verify=True)`` to warn.
        train_size: number of training images in the official release.
        test_size: number of test images in the official release.
        download_host: ``(host, port)`` tensorflow-datasets downloads from; probed
            before a download so an offline machine fails in milliseconds instead of
            after minutes of retries.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    label_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    filename: str
    sha256: str | None
    train_size: int
    test_size: int
    download_host: tuple[str, int]


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            input_shape=(28, 28, 1),
            num_classes=10,
            label_names=tuple(str(d) for d in range(10)),
            # Measured on the 60,000 training images: 0.13066, 0.30811.
            mean=(0.1307,),
            std=(0.3081,),
            filename="mnist.npz",
            sha256="06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64",
            train_size=60000,
            test_size=10000,
            download_host=("storage.googleapis.com", 443),
        ),
        DatasetSpec(
            name="fashion_mnist",
            input_shape=(28, 28, 1),
            num_classes=10,
            label_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            # The values usually quoted (no local copy here to re-measure them).
            mean=(0.2860,),
            std=(0.3530,),
            filename="fashion_mnist.npz",
            sha256=None,
            train_size=60000,
            test_size=10000,
            download_host=("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
        ),
        DatasetSpec(
            name="cifar10",
            input_shape=(32, 32, 3),
            num_classes=10,
            label_names=("airplane", "automobile", "bird", "cat", "deer",
                         "dog", "frog", "horse", "ship", "truck"),
            # Measured on the 50,000 training images: (0.49140, 0.48216, 0.44653),
            # (0.24703, 0.24349, 0.26159).
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            filename="cifar10.npz",
            sha256="a44cc18e4ad961b5158c7da062a6232fb65938b615bf013046199b823b75c43d",
            train_size=50000,
            test_size=10000,
            download_host=("www.cs.toronto.edu", 443),
        ),
    )
}


def get_dataset(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered as ``name``."""
    if name not in DATASETS:
        raise ValueError(f"`dataset` must be one of {sorted(DATASETS)}; got {name!r}.")
    return DATASETS[name]


@dataclasses.dataclass(frozen=True)
class Preset:
    """One pretrained variant: a recipe, its dataset and its shipped weights.

    Attributes:
        name: the preset name (``from_preset(name)``), also the recipe's name.
        recipe: name of the registered recipe that trained the weights (its
            builder, builder options and training plan: ``keras_effcnn.recipes``).
        dataset: name in :data:`DATASETS` (input shape, normalisation, labels).
        weights_file: file name in :data:`WEIGHTS_DIR`.
        results_file: the training run's ``results.json`` in :data:`WEIGHTS_DIR`,
            where :attr:`metrics` are read from.
        aliases: other names ``weights=`` accepts (the dataset name, for the
            historical ``weights="mnist"``).
        description: one line for tables.
    """

    name: str
    recipe: str
    dataset: str
    weights_file: str
    results_file: str
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def dataset_spec(self) -> DatasetSpec:
        return DATASETS[self.dataset]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.dataset_spec.input_shape

    @property
    def num_classes(self) -> int:
        return self.dataset_spec.num_classes

    @property
    def mean(self) -> tuple[float, ...]:
        return self.dataset_spec.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.dataset_spec.std

    @property
    def labels(self) -> tuple[str, ...]:
        return self.dataset_spec.label_names

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / self.weights_file

    @property
    def builder(self) -> str:
        """The zoo builder name (``keras_effcnn.models``) of the preset's recipe."""
        return self.recipe_record().model

    def recipe_record(self):
        """The registered ``keras_effcnn.recipes.Recipe`` (imports TensorFlow)."""
        from keras_effcnn import recipes

        return recipes.get_recipe(self.recipe)

    @property
    def metrics(self) -> dict[str, Any]:
        """Measured facts of the shipped weights, read from their results file.

        ``test_accuracy`` is the final epoch's accuracy on the full official test
        set; ``params`` and ``macs`` are counted on the trained model; ``command``
        and ``commit`` say how it was made.
        """
        results = json.loads((WEIGHTS_DIR / self.results_file).read_text())
        return {"test_accuracy": results["test"]["accuracy"], "test_loss": results["test"].get("loss"),
                "epochs": results["epochs"], "params": results["params"], "macs": results["macs"],
                "command": results.get("command"), "commit": results.get("commit")}


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(name="mnist_1500", recipe="mnist_1500", dataset="mnist", weights_file="mnist_1500.weights.h5",
               results_file="mnist_1500.json", aliases=("mnist",),
               description="<=1,500-parameter MNIST net, one-cycle LR, 1-pixel shifts"),
        Preset(name="cifar10_140k", recipe="cifar10_140k", dataset="cifar10",
               weights_file="cifar10_140k.weights.h5", results_file="cifar10_140k.json", aliases=("cifar10",),
               description="<=140K-parameter CIFAR-10 net, BlurPool, SE, one-cycle, crop+flip, label smoothing"),
    )
}

_ALIASES = {alias: preset.name for preset in PRESETS.values() for alias in preset.aliases}


def list_presets() -> list[str]:
    """Names of every preset, sorted (aliases such as ``"cifar10"`` are accepted too)."""
    return sorted(PRESETS)


def is_preset(name: Any) -> bool:
    """Whether ``name`` is a preset name or alias (a path never is)."""
    return isinstance(name, str) and (name in PRESETS or name in _ALIASES)


def get_preset(name: str) -> Preset:
    """The :class:`Preset` named ``name`` or one of its aliases (``"mnist"``, ``"cifar10"``)."""
    if not is_preset(name):
        raise ValueError(f"`preset` must be one of {list_presets()} (or an alias: {sorted(_ALIASES)}); "
                         f"got {name!r}.")
    return PRESETS[_ALIASES.get(name, name)]


def dataset_for_input_shape(input_shape) -> str:
    """The registered dataset of a model's input shape (ambiguous shapes prefer a preset's dataset).

    Raises:
        ValueError: no dataset has this image shape.
    """
    shape = tuple(int(d) if d is not None else None for d in input_shape)
    matches = [spec.name for spec in DATASETS.values() if spec.input_shape == shape]
    # 28x28x1 is MNIST and Fashion-MNIST alike: the one with shipped weights wins.
    preferred = [m for m in matches if any(p.dataset == m for p in PRESETS.values())]
    if not matches:
        raise ValueError(f"cannot tell the dataset from input shape {shape}: no registered dataset has it "
                         f"({ {n: s.input_shape for n, s in DATASETS.items()} }); pass --dataset")
    return (preferred or matches)[0]


def from_preset(name: str, **kwargs: Any):
    """A compiled recipe model with a preset's weights (KerasHub's ``from_preset``).

    Args:
        name: a preset (:func:`list_presets`) or alias (``"mnist"``, ``"cifar10"``).
        **kwargs: keras.applications-style options of ``keras_effcnn.recipes.build``
            (``num_classes``, ``input_shape``, ``include_top``, ``pooling``,
            ``classifier_activation``) and recipe field changes. With another head
            the trunk loads and the head starts fresh.

    Example:

    ```python
    model = from_preset("cifar10_140k", num_classes=2)
    model.fit(x, y_integer, epochs=3)
    ```
    """
    from keras_effcnn import recipes

    preset = get_preset(name)
    return recipes.build(preset.recipe, weights=preset.name, **kwargs)

"""keras-effcnn: small, fast, robust CNNs for Keras 3.

The nuts and bolts of Ethiraj & Bolla, *Training Efficient CNNs: Tweaking the
Nuts and Bolts of Neural Networks* (arXiv 2205.12050) as serializable Keras 3
building blocks, assembled by recipe functions that return compiled models.

``import keras_effcnn`` registers every serializable object of the package
(layers, schedules, callbacks, losses, metrics, the recipe and SAM model
classes), so ``keras.models.load_model("m.keras")`` works in a fresh process,
in safe mode, after that one import. Those modules import only Keras; the rest
(data pipelines, recipes, export, tuning...) is imported on first use.

Example:

```python
import keras, keras_effcnn

keras_effcnn.list_presets()                       # ['cifar10_140k', 'mnist_1500']
model = keras_effcnn.from_preset("cifar10_140k")  # compiled, with the shipped weights
model.save("m.keras")
keras.models.load_model("m.keras").training_plan  # the recipe survives saving
```
"""

from __future__ import annotations

import importlib

# Registering imports: every keras.saving-registered class lives in one of these (Keras-only) modules.
from keras_effcnn import callbacks, layers, losses, metrics, presets, recipe_model, sam, schedules  # noqa: F401
from keras_effcnn.presets import from_preset, list_presets

__version__ = "0.1.0"

_LAZY_SUBMODULES = (
    "augment",
    "data",
    "models",
    "recipes",
    "export",
    "tuning",
    "robustness",
    "determinism",
    "plots",
    "provenance",
    "test_time",
)
_SUBMODULES = ("callbacks", "layers", "losses", "metrics", "presets", "recipe_model", "sam", "schedules",
               *_LAZY_SUBMODULES)

__all__ = list(_SUBMODULES) + ["__version__", "from_preset", "list_presets"]


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'keras_effcnn' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

"""keras-effcnn: small, fast, robust CNNs for Keras 3.

The nuts and bolts of Ethiraj & Bolla, *Training Efficient CNNs: Tweaking the
Nuts and Bolts of Neural Networks* (arXiv 2205.12050) as serializable Keras 3
building blocks, assembled by recipe functions that return compiled models.

Submodules are imported on first use so that ``import keras_effcnn`` stays
cheap and floor-1 pieces (layers, schedules) work without TensorFlow-only
extras.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "layers",
    "schedules",
    "callbacks",
    "sam",
    "augment",
    "data",
    "models",
    "recipes",
    "export",
    "tuning",
    "robustness",
    "determinism",
    "plots",
)

__all__ = list(_SUBMODULES) + ["__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'keras_effcnn' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

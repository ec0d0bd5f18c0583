"""Datasets to ``tf.data``: MNIST, Fashion-MNIST and CIFAR-10, offline first.

Three sources give the same arrays:

* ``"local"``: a folder of ``.npz`` files (``mnist.npz``, ``fashion_mnist.npz``,
  ``cifar10.npz``, each with keys ``x_train``, ``y_train``, ``x_test``,
  ``y_test``), named by the ``data_dir`` argument or the
  ``KERAS_EFFCNN_DATA_DIR`` environment variable;
* ``"tfds"``: tensorflow-datasets, which downloads once and caches (an offline
  MNIST can be prepared from the original idx files with ``tfds_manual_dir``);
* ``"keras"``: ``keras.datasets``, which downloads into ``~/.keras/datasets``.

``"auto"`` tries them in that order (local only when a folder is named) and
raises one :class:`DataNotFoundError` listing every attempt when all fail.
Files that exist but are damaged raise :class:`DataFormatError` at once
instead of being silently replaced by a download.

Images leave :func:`load` as ``float32`` in ``[0, 1]``, channels last; the
per-dataset mean/std normalisation is the first layer of every zoo model, so it
is not applied here (``DATASETS[name].mean``/``.std`` hold the statistics).

Example:

```python
from keras_effcnn import data

splits = data.load("cifar10", "~/data", batch_size=128, validation_split=0.1)
for images, labels in splits.train.take(1):
    print(images.shape, labels.shape)  # (128, 32, 32, 3) (128, 10)
```
"""

from __future__ import annotations

from keras_effcnn.data.pipelines import DataInfo, EpochSetter, Splits, as_dataset, load, new_epoch_variable
from keras_effcnn.data.registry import (
    DATASETS,
    ENV_DATA_DIR,
    ENV_TFDS_MANUAL_DIR,
    SOURCES,
    DataFormatError,
    DataNotFoundError,
    DatasetSpec,
)
from keras_effcnn.data.sources import clear_cache, load_arrays, representative_images, validate_arrays

__all__ = [
    "DATASETS",
    "ENV_DATA_DIR",
    "ENV_TFDS_MANUAL_DIR",
    "SOURCES",
    "DataFormatError",
    "DataInfo",
    "DataNotFoundError",
    "DatasetSpec",
    "EpochSetter",
    "Splits",
    "as_dataset",
    "clear_cache",
    "load",
    "load_arrays",
    "new_epoch_variable",
    "representative_images",
    "validate_arrays",
]

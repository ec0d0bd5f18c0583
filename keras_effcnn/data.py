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

import dataclasses
import functools
import hashlib
import os
import socket
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import keras
import numpy as np
import tensorflow as tf

from keras_effcnn.augment import Augmentation
from keras_effcnn.layers._validation import check_choice, check_float, check_int

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

ENV_DATA_DIR = "KERAS_EFFCNN_DATA_DIR"
ENV_TFDS_MANUAL_DIR = "KERAS_EFFCNN_TFDS_MANUAL_DIR"
SOURCES = ("auto", "local", "tfds", "keras")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
BatchMap = Callable[[Any, Any], tuple[Any, Any]]


class DataNotFoundError(FileNotFoundError):
    """No source could provide the dataset; the message lists what was tried and how to fix it."""


class DataFormatError(ValueError):
    """A dataset file or download exists but is unreadable or has the wrong content."""


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


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """Facts about the splits returned by :func:`load`.

    Attributes:
        name: dataset name.
        num_classes: number of classes.
        input_shape: ``(height, width, channels)`` of one image.
        label_names: class names in label order.
        counts: number of examples per split: ``{"train", "val", "test"}``.
        steps_per_epoch: training batches per epoch (the last one may be smaller).
        mean: per-channel training mean in ``[0, 1]`` units (for the model's normalisation).
        std: per-channel training standard deviation in ``[0, 1]`` units.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    label_names: tuple[str, ...]
    counts: dict[str, int]
    steps_per_epoch: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Splits:
    """Batched ``tf.data`` pipelines for one dataset.

    Attributes:
        train: shuffled each epoch, augmented; ``(images, labels)`` batches. Epoch-pure:
            see :func:`load`.
        val: validation split carved from the training set, or None.
        test: the official test set, in order.
        info: a :class:`DataInfo`.
        epoch: the int64 variable ``train`` reads its epoch from (``-1``: not set).
        train_ordered: the training split in stored order, neither shuffled nor
            augmented (e.g. for BatchNorm recomputation after SWA).
    """

    train: tf.data.Dataset
    val: tf.data.Dataset | None
    test: tf.data.Dataset
    info: DataInfo
    # compare=False: tf.Variable has no boolean == and no hash.
    epoch: tf.Variable | None = dataclasses.field(default=None, compare=False)
    train_ordered: tf.data.Dataset | None = dataclasses.field(default=None, compare=False)

    def epoch_callback(self) -> "EpochSetter":
        """The callback that makes ``fit`` tell ``train`` its epoch; add it to every ``fit`` on ``train``."""
        if self.epoch is None:
            raise ValueError("these Splits have no epoch variable (built without data.load); "
                             "`epoch_callback()` needs one")
        return EpochSetter(self.epoch)


# ----------------------------------------------------------------------------- validation


def _fail(error: type[Exception], where: str, message: str) -> NoReturn:
    raise error(f"{where}: {message}")


def _checked(
    x: Any,
    y: Any,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    where: str = "data",
    error: type[Exception] = ValueError,
    require_uint8: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Validates images/labels and returns them as ``(N, H, W, C)`` and ``(N,)`` or ``(N, K)``."""
    check_int("num_classes", num_classes, 1)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in input_shape):
        raise ValueError(f"`input_shape` must be (height, width, channels) of positive integers; "
                         f"got {input_shape!r}")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or len(x) == 0:
        _fail(error, where, f"the dataset is empty (images have shape {x.shape}); "
                            "it needs at least one image")
    if y.ndim == 0 or len(y) != len(x):
        _fail(error, where, f"{len(x)} images but {y.size if y.ndim == 0 else len(y)} labels "
                            f"(labels have shape {y.shape}); there must be one label per image")
    if x.ndim == 3 and input_shape[-1] == 1:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        _fail(error, where, f"images must have shape (N, height, width, channels) "
                            f"(or (N, height, width) for one channel); got {x.shape}")
    if x.shape[1:3] != input_shape[:2]:
        _fail(error, where, f"images are {x.shape[1]}x{x.shape[2]} pixels but {input_shape[0]}x"
                            f"{input_shape[1]} are expected (input_shape={input_shape}); "
                            "resize them or build the model for this size")
    if x.shape[3] != input_shape[2]:
        _fail(error, where, f"images have {x.shape[3]} channel(s) but {input_shape[2]} are expected "
                            f"(input_shape={input_shape}); channels must be the last axis "
                            "(convert grayscale<->RGB or build the model for this many channels)")
    if require_uint8 and x.dtype != np.uint8:
        _fail(error, where, f"images must be uint8 (raw 0..255 pixels); got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            _fail(error, where, f"images contain {int((~finite).sum())} non-finite pixel value(s) "
                                f"(NaN or inf), the first at index {tuple(int(i) for i in bad)}")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            _fail(error, where, f"float images must lie in [0, 1]; found values in [{lo:g}, {hi:g}] "
                                "(divide 0..255 pixels by 255, or pass them as uint8)")
    elif np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            _fail(error, where, f"integer images must hold 0..255 pixels; found values in [{lo}, {hi}]")
        x = x.astype(np.uint8)
    elif x.dtype != np.uint8:
        _fail(error, where, f"images must be uint8 (0..255) or float (0..1); got dtype {x.dtype}")

    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            _fail(error, where, f"one-hot labels have {y.shape[1]} columns but there are "
                                f"{num_classes} classes")
        y = y.astype(np.float32)
        sums = y.sum(axis=1)
        if not np.isfinite(y).all() or y.min() < 0 or not np.allclose(sums, 1.0, atol=1e-3):
            _fail(error, where, "one-hot labels must be finite, non-negative and sum to 1 per row")
        return x, y
    if y.ndim != 1:
        _fail(error, where, f"labels must be class indices of shape (N,) or (N, 1), or one-hot of "
                            f"shape (N, {num_classes}); got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
            _fail(error, where, "labels are floats with non-integer values; pass integer class indices")
    elif not np.issubdtype(y.dtype, np.integer):
        _fail(error, where, f"labels must be integer class indices; got dtype {y.dtype}")
    out_of_range = (y < 0) | (y >= num_classes)
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        _fail(error, where, f"labels must be in 0..{num_classes - 1}; found {int(out_of_range.sum())} "
                            f"outside (e.g. {y[i]} at index {i}; range seen {y.min()}..{y.max()})")
    return x, y.astype(np.int64)


def validate_arrays(x: Any, y: Any, *, input_shape: Sequence[int], num_classes: int) -> None:
    """Checks user-provided images and labels before any training starts.

    Each problem raises one ``ValueError`` that says what is wrong and how to fix
    it: an empty dataset, images/labels length mismatch, wrong image size or
    channel count, a wrong pixel dtype, non-finite pixels, float pixels outside
    ``[0, 1]``, labels of the wrong shape or dtype, and labels out of range.

    Args:
        x: images, ``(N, H, W, C)`` (or ``(N, H, W)`` when ``C == 1``), uint8
            0..255 or float in ``[0, 1]``.
        y: integer class indices ``(N,)``/``(N, 1)``, or one-hot ``(N, num_classes)``.
        input_shape: expected ``(height, width, channels)``.
        num_classes: number of classes.

    Raises:
        ValueError: on the first problem found.

    Example:

    ```python
    validate_arrays(x, y, input_shape=(32, 32, 3), num_classes=10)
    ```
    """
    _checked(x, y, input_shape=input_shape, num_classes=num_classes)


# ----------------------------------------------------------------------------- sources


def _spec(name: str) -> DatasetSpec:
    return DATASETS[check_choice("name", name, DATASETS)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _finish(spec: DatasetSpec, raw: dict[str, np.ndarray], where: str) -> Arrays:
    """Validates freshly loaded arrays and freezes them, since they live in a shared cache."""
    out = []
    for split in ("train", "test"):
        x, y = _checked(raw[f"x_{split}"], raw[f"y_{split}"], input_shape=spec.input_shape,
                        num_classes=spec.num_classes, where=f"{where} ({split} split)",
                        error=DataFormatError, require_uint8=True)
        x.setflags(write=False)
        y.setflags(write=False)
        out.append((x, y))
    return out[0], out[1]


@functools.lru_cache(maxsize=4)
def _read_npz(path: str, name: str, _mtime_ns: int, _size: int) -> Arrays:
    # mtime and size are part of the cache key so that a replaced file is re-read.
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise DataFormatError(f"{path}: holds a single .npy array, not an .npz archive with keys "
                              f"{', '.join(NPZ_KEYS)}")
    if not zipfile.is_zipfile(path):
        raise DataFormatError(f"{path}: not an .npz archive (no zip directory found): the file is "
                              "truncated or in another format; copy or download it again")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in NPZ_KEYS if k not in archive.files]
            if missing:
                raise DataFormatError(f"{path}: missing key(s) {', '.join(missing)}; found "
                                      f"{', '.join(archive.files) or 'none'}; expected "
                                      f"{', '.join(NPZ_KEYS)}")
            raw = {k: archive[k] for k in NPZ_KEYS}
    except (DataFormatError, PermissionError):
        raise
    except Exception as e:  # zipfile, zlib, the .npy header parser and numpy all raise their own
        raise DataFormatError(f"{path}: damaged .npz archive ({type(e).__name__}: {e}); the file "
                              "is corrupt: copy or download it again") from e
    return _finish(DATASETS[name], raw, path)


def _from_local(spec: DatasetSpec, data_dir: Path, origin: str, verify: bool) -> Arrays:
    if not data_dir.is_dir():
        raise DataNotFoundError(f"the local data folder {data_dir} (from {origin}) does not exist")
    path = data_dir / spec.filename
    if not path.is_file():
        present = sorted(p.name for p in data_dir.glob("*.npz"))
        raise DataNotFoundError(f"{path} (from {origin}) does not exist (.npz files there: "
                                f"{', '.join(present) or 'none'})")
    if verify and spec.sha256 is not None:
        digest = _sha256(path)
        if digest != spec.sha256:
            warnings.warn(f"{path}: sha256 {digest} differs from the reference copy's "
                          f"{spec.sha256}; using the file anyway", stacklevel=3)
    stat = path.stat()
    return _read_npz(str(path.resolve()), spec.name, stat.st_mtime_ns, stat.st_size)


def _online(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@functools.lru_cache(maxsize=4)
def _from_tfds(name: str, tfds_data_dir: str | None, manual_dir: str | None) -> Arrays:
    spec = DATASETS[name]
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataNotFoundError("tensorflow-datasets is not installed "
                                "(pip install tensorflow-datasets)") from e
    builder = tfds.builder(name, data_dir=tfds_data_dir)
    if not builder.is_prepared():
        if manual_dir is None and not _online(*spec.download_host):
            # tfds would retry the download with back-off for minutes before failing.
            raise DataNotFoundError(f"{name} is not prepared in the tensorflow-datasets folder "
                                    f"{builder.data_dir} and {spec.download_host[0]} is unreachable "
                                    "(no internet)")
        config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as e:  # tfds raises assorted network/checksum/IO errors
            raise DataNotFoundError(f"tensorflow-datasets could not prepare {name} "
                                    f"({type(e).__name__}: {str(e)[:300]})") from e
    split = builder.as_dataset(batch_size=-1, as_supervised=True)
    (x_train, y_train), (x_test, y_test) = (tfds.as_numpy(split[s]) for s in ("train", "test"))
    raw = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return _finish(spec, raw, f"tensorflow-datasets {name} in {builder.data_dir}")


@functools.lru_cache(maxsize=4)
def _from_keras(name: str) -> Arrays:
    import keras

    # Called without `path`: keras.datasets manages its own cache and, offline, deletes a
    # file whose hash it does not recognise, so it must never be pointed at user files.
    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as e:  # keras raises a bare Exception for failed downloads
        raise DataNotFoundError(f"keras.datasets could not download {name} "
                                f"({type(e).__name__}: {str(e)[:300]})") from e
    raw = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return _finish(DATASETS[name], raw, f"keras.datasets.{name}")


def load_arrays(
    name: str,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    *,
    verify: bool = False,
    tfds_data_dir: str | os.PathLike | None = None,
    tfds_manual_dir: str | os.PathLike | None = None,
) -> Arrays:
    """Loads a dataset as NumPy arrays: ``(x_train, y_train), (x_test, y_test)``.

    Images are uint8 ``(N, H, W, C)`` (MNIST gets a channel axis), labels int64
    ``(N,)``, in the official order (tfds stores its own shuffled order). The
    arrays are validated on load, cached in-process and read-only.

    Args:
        name: one of ``DATASETS`` (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``).
        data_dir: folder with ``<name>.npz`` files; defaults to ``$KERAS_EFFCNN_DATA_DIR``.
        source: ``"local"``, ``"tfds"``, ``"keras"`` or ``"auto"`` (local when a
            folder is named, then tfds, then keras.datasets).
        verify: compare a local file's sha256 with the reference copy's and warn
            on a mismatch (the file is used anyway).
        tfds_data_dir: tensorflow-datasets folder (default: tfds' own, ``$TFDS_DATA_DIR``).
        tfds_manual_dir: folder with the original download files, so tfds can
            prepare the dataset offline (default ``$KERAS_EFFCNN_TFDS_MANUAL_DIR``).

    Returns:
        ``(x_train, y_train), (x_test, y_test)``.

    Raises:
        DataNotFoundError: no source had the dataset; the message lists each attempt.
        DataFormatError: a file or download is unreadable, lacks keys or holds
            wrong shapes, dtypes or labels.

    Example:

    ```python
    (x_train, y_train), (x_test, y_test) = load_arrays("mnist", "/data")
    x_train.shape  # (60000, 28, 28, 1)
    ```
    """
    spec = _spec(name)
    check_choice("source", source, SOURCES)
    if data_dir is not None:
        local_dir, origin = Path(data_dir).expanduser(), "the data_dir argument"
    elif os.environ.get(ENV_DATA_DIR):
        local_dir, origin = Path(os.environ[ENV_DATA_DIR]).expanduser(), f"${ENV_DATA_DIR}"
    else:
        local_dir, origin = None, None
    manual = tfds_manual_dir if tfds_manual_dir is not None else os.environ.get(ENV_TFDS_MANUAL_DIR)
    attempts: list[tuple[str, Callable[[], Arrays]]] = []
    if source in ("local", "auto") and local_dir is not None:
        attempts.append(("local", lambda: _from_local(spec, local_dir, origin, verify)))
    elif source == "local":
        raise DataNotFoundError(f"{name}: source='local' needs a data folder: pass data_dir=<folder "
                                f"holding {spec.filename}> or set {ENV_DATA_DIR}")
    if source in ("tfds", "auto"):
        attempts.append(("tfds", lambda: _from_tfds(
            name, None if tfds_data_dir is None else str(Path(tfds_data_dir).expanduser()),
            None if manual is None else str(Path(manual).expanduser()))))
    if source in ("keras", "auto"):
        attempts.append(("keras", lambda: _from_keras(name)))

    failures = []
    for label, attempt in attempts:
        try:
            return attempt()
        except DataNotFoundError as e:
            failures.append(f"  - {label}: {e}")
            if label == "local" and len(attempts) > 1:
                warnings.warn(f"{e}; trying to download it instead", stacklevel=2)
    if source == "auto" and local_dir is None:
        failures.insert(0, f"  - local: no data folder given (data_dir argument or ${ENV_DATA_DIR})")
    raise DataNotFoundError(
        f"could not load dataset {name!r} (source={source!r}); tried:\n" + "\n".join(failures) + "\n"
        f"Fix: put {spec.filename} (keys {', '.join(NPZ_KEYS)}) in a folder and pass "
        f"data_dir=<folder> or set {ENV_DATA_DIR}=<folder>; or connect to the internet so "
        "tensorflow-datasets or keras.datasets can download it."
    )


def clear_cache() -> None:
    """Forgets the arrays cached by :func:`load_arrays`."""
    for cached in (_read_npz, _from_tfds, _from_keras):
        cached.cache_clear()


# ----------------------------------------------------------------------------- pipelines

# Few threads, no autotuning: on small shared CPUs tf.data's autotuner stalls for
# seconds per epoch, and the batched maps below are already vectorised.
_THREADS = max(1, min(4, os.cpu_count() or 1))


def _pipeline_options() -> tf.data.Options:
    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = _THREADS
    options.deterministic = True
    return options


def _to_float(images: tf.Tensor, labels: tf.Tensor, *, scale: float, num_classes: int,
              one_hot: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of stored images/labels as float32 ``[0, 1]`` images and the requested labels."""
    images = tf.cast(images, tf.float32) * scale
    soft = labels.shape.rank == 2
    if one_hot and not soft:
        labels = tf.one_hot(labels, num_classes, dtype=tf.float32)
    elif not one_hot and not soft:
        labels = tf.cast(labels, tf.int32)
    return images, labels


def new_epoch_variable() -> tf.Variable:
    """The variable an epoch-pure pipeline reads its epoch from; ``-1`` until a run sets it.

    Example:

    ```python
    epoch = new_epoch_variable()
    ds = as_dataset(x, y, num_classes=10, shuffle=True, epoch=epoch)
    model.fit(ds, epochs=5, callbacks=[EpochSetter(epoch)])
    ```
    """
    return tf.Variable(-1, dtype=tf.int64, trainable=False, name="data_epoch")


def _pipeline(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    batch_size: int,
    one_hot: bool,
    shuffle: bool,
    seed: int,
    augment: Sequence[BatchMap],
    epoch: tf.Variable | None = None,
    images: tf.Tensor | None = None,
    labels: tf.Tensor | None = None,
) -> tf.data.Dataset:
    """Batches validated uint8/float arrays into float32 ``[0, 1]`` images and labels.

    Without shuffling and augmentation, the arrays in order. Otherwise epoch-pure:
    epoch ``k``'s order and augmentation are a function of ``(seed, k)`` alone, with
    ``k`` read from ``epoch`` when an iteration starts (see :class:`EpochSetter`).
    While ``epoch`` is negative each iteration draws its own key from a seeded
    stream instead, so plain loops still get a new order every pass.
    """
    scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    convert = functools.partial(_to_float, scale=scale, num_classes=num_classes, one_hot=one_hot)
    # One tensor per array, shared by the pipelines of a split (no second copy of the images).
    images = tf.convert_to_tensor(x) if images is None else images
    labels = tf.convert_to_tensor(y) if labels is None else labels
    if not shuffle and not augment:
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
        # Converting after batching is one vectorised op per batch instead of per image.
        return dataset.map(convert, num_parallel_calls=_THREADS).prefetch(2).with_options(_pipeline_options())

    if epoch is None:
        epoch = new_epoch_variable()
    n = len(x)
    seed_t = tf.constant(seed, tf.int64)
    # Each augmentation's stream is keyed by (its own seed, or the pipeline's, and its position).
    keys = [None if not isinstance(fn, Augmentation) else
            tf.constant([seed if fn.seed is None else fn.seed, j], tf.int64) for j, fn in enumerate(augment)]

    def one_epoch(fallback):
        e = epoch.read_value()
        e = tf.where(e >= 0, e, fallback)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), tf.stack([seed_t, e]))
        else:
            order = tf.range(n, dtype=tf.int64)

        def load_batch(i, idx):
            batch = convert(tf.gather(images, idx), tf.gather(labels, idx))
            for fn, key in zip(augment, keys):
                if key is None:
                    batch = fn(*batch)
                else:
                    batch_seed = tf.random.experimental.stateless_fold_in(
                        tf.random.experimental.stateless_fold_in(key, e), i)
                    batch = fn.stateless(*batch, batch_seed)
            return batch

        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
        # Stateless maps may run in parallel; a plain callable may hold random state, whose
        # draws are reproducible only in a sequential map.
        if all(key is not None for key in keys):
            return batches.map(load_batch, num_parallel_calls=_THREADS, deterministic=True)
        return batches.map(load_batch)

    # Only read while the epoch variable is negative: a new key per iterator, as a
    # reshuffling Dataset.shuffle would give.
    fallback = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    dataset = fallback.flat_map(one_epoch)
    # A known length lets Keras count the batches of an epoch (and checkpoints check it).
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-n // batch_size)))
    return dataset.prefetch(2).with_options(_pipeline_options())


class EpochSetter(keras.callbacks.Callback):
    """Tells epoch-pure pipelines which epoch ``fit`` is starting.

    Assigns the epoch in ``on_epoch_begin``, before Keras creates the epoch's data
    iterator; a resumed ``fit`` starts at the resumed epoch, so its batches are those
    the interrupted run would have trained on. Not serialisable on purpose: it holds
    the variable of one pipeline.

    Args:
        epoch: the pipeline's epoch variable (``Splits.epoch``, or the one given to
            :func:`as_dataset`); a new one when None (see :func:`new_epoch_variable`).

    Example:

    ```python
    splits = load("mnist", batch_size=128, augment=[augment.random_shift(2, seed=0)])
    model.fit(splits.train, epochs=10, callbacks=[splits.epoch_callback()])
    ```
    """

    def __init__(self, epoch: tf.Variable | None = None):
        super().__init__()
        if epoch is None:
            epoch = new_epoch_variable()
        elif not isinstance(epoch, tf.Variable) or epoch.dtype != tf.int64 or epoch.shape.rank != 0:
            raise ValueError(f"`epoch` must be a scalar int64 tf.Variable (see new_epoch_variable()); got {epoch!r}")
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)


def _check_pipeline_args(batch_size: int, augment: Any, shuffle_buffer: int | None) -> tuple:
    check_int("batch_size", batch_size, 1)
    if shuffle_buffer is not None:
        check_int("shuffle_buffer", shuffle_buffer, 1)
        warnings.warn("`shuffle_buffer` is deprecated and ignored: the training pipeline permutes indices, "
                      "a full shuffle that holds no copy of the images.", DeprecationWarning, stacklevel=3)
    augment = (augment,) if callable(augment) else tuple(augment or ())
    for fn in augment:
        if not callable(fn):
            raise ValueError(f"`augment` must be a sequence of callables (images, labels) -> "
                             f"(images, labels); got {fn!r} in it")
    return augment


def as_dataset(
    x: Any,
    y: Any,
    *,
    num_classes: int,
    batch_size: int = 128,
    input_shape: Sequence[int] | None = None,
    one_hot: bool = True,
    shuffle: bool = False,
    seed: int = 0,
    augment: Sequence[BatchMap] = (),
    shuffle_buffer: int | None = None,
    epoch: tf.Variable | None = None,
) -> tf.data.Dataset:
    """Validates user arrays and batches them through the same pipeline as :func:`load`.

    Args:
        x: images ``(N, H, W, C)`` (or ``(N, H, W)``), uint8 0..255 or float in ``[0, 1]``.
        y: class indices ``(N,)``/``(N, 1)`` or one-hot ``(N, num_classes)``.
        num_classes: number of classes.
        batch_size: images per batch (the last batch may be smaller).
        input_shape: expected ``(H, W, C)``; defaults to the images' own shape.
        one_hot: emit one-hot float labels (needed by Mixup) instead of int32 indices.
        shuffle: a new order every epoch, for training: epoch ``k``'s order is a
            function of ``(seed, k)`` (see :func:`load`).
        seed: shuffle seed; also keys augmentations whose own seed is None.
        augment: batched ``(images, labels) -> (images, labels)`` maps applied in
            order; :class:`keras_effcnn.augment.Augmentation` objects get
            per-batch seeds from ``(their seed, epoch, batch)``.
        shuffle_buffer: deprecated and ignored (the shuffle is always full).
        epoch: the variable the pipeline reads the epoch from (see
            :func:`new_epoch_variable`; ``fit`` with :class:`EpochSetter` sets it).
            None: every pass over the dataset draws a new seeded key instead.

    Returns:
        A batched ``tf.data.Dataset`` of float32 ``[0, 1]`` images and labels.

    Raises:
        ValueError: for bad arrays (see :func:`validate_arrays`) or arguments.

    Example:

    ```python
    setter = EpochSetter()
    ds = as_dataset(x_uint8, y, num_classes=10, batch_size=64, shuffle=True, epoch=setter.epoch)
    model.fit(ds, epochs=3, callbacks=[setter])
    ```
    """
    augment = _check_pipeline_args(batch_size, augment, shuffle_buffer)
    x_arr = np.asarray(x)
    if input_shape is None:
        input_shape = x_arr.shape[1:] + ((1,) if x_arr.ndim == 3 else ())
        if len(input_shape) != 3:
            raise ValueError(f"images must have shape (N, height, width, channels); got {x_arr.shape}")
    x_arr, y_arr = _checked(x_arr, y, input_shape=input_shape, num_classes=num_classes)
    if y_arr.ndim == 2 and not one_hot:
        raise ValueError("`one_hot=False` needs class-index labels, but one-hot labels of shape "
                         f"{y_arr.shape} were given")
    return _pipeline(x_arr, y_arr, num_classes=num_classes, batch_size=batch_size, one_hot=one_hot,
                     shuffle=shuffle, seed=seed, augment=augment, epoch=epoch)


def _validation_indices(y: np.ndarray, fraction: float, seed: int, stratify: bool) -> np.ndarray:
    """Sorted indices of a seeded validation split with ``round(fraction * N)`` examples."""
    n = len(y)
    n_val = int(round(fraction * n))
    if not 1 <= n_val < n:
        raise ValueError(f"`validation_split`={fraction} of {n} training examples gives {n_val} "
                         "validation examples; it must leave at least one in each split")
    rng = np.random.default_rng(seed)
    if not stratify:
        return np.sort(rng.permutation(n)[:n_val])
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * (n_val / n)
    take = np.floor(quota).astype(int)
    # Largest remainders get the leftover examples so the total is exactly n_val.
    extra = np.argsort(-(quota - take), kind="stable")[: n_val - take.sum()]
    take[extra] += 1
    picked = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    batch_size: int = 128,
    validation_split: float = 0.0,
    seed: int = 0,
    augment: Sequence[BatchMap] = (),
    one_hot: bool = True,
    source: str = "auto",
    shuffle_buffer: int | None = None,
    subset: int | None = None,
    stratify: bool = True,
    tfds_data_dir: str | os.PathLike | None = None,
    tfds_manual_dir: str | os.PathLike | None = None,
) -> Splits:
    """Loads a dataset as batched train/validation/test ``tf.data`` pipelines.

    Images are float32 in ``[0, 1]``, channels last. The training pipeline is
    shuffled every epoch and runs ``augment`` after batching; the validation and
    test pipelines are neither shuffled nor augmented. The validation split is
    carved from the training set, never from the test set.

    The training pipeline is *epoch-pure*: epoch ``k``'s order is
    ``tf.random.experimental.stateless_shuffle(range(N), seed=[seed, k])`` and the
    ``j``-th augmentation (an :class:`keras_effcnn.augment.Augmentation`) gets for
    batch ``b`` the seed ``stateless_fold_in(stateless_fold_in([aug_seed, j], k), b)``
    (``aug_seed`` is its own seed, or ``seed`` when that is None). ``k`` is read from
    ``Splits.epoch`` when an epoch's iterator starts; ``Splits.epoch_callback()`` sets
    it in ``fit``, so a run resumed at epoch ``k`` in a new process sees the same
    batches. Without that callback (the variable stays ``-1``) every pass over
    ``train`` draws its key from a seeded stream: a new order each pass,
    reproducible, but dependent on how many iterators were created before.

    Args:
        name: one of ``DATASETS``.
        data_dir: folder with ``<name>.npz``; see :func:`load_arrays`.
        batch_size: images per batch (the last batch of an epoch may be smaller).
        validation_split: fraction of the training set held out for validation, in ``[0, 1)``.
        seed: seeds the validation split and the shuffling.
        augment: batched ``(images, labels) -> (images, labels)`` maps for the
            training pipeline, e.g. ``keras_effcnn.augment.random_crop_flip``.
        one_hot: one-hot float32 labels (needed by Mixup and label smoothing);
            False gives int32 class indices.
        source: ``"auto"``, ``"local"``, ``"tfds"`` or ``"keras"``; see :func:`load_arrays`.
        shuffle_buffer: deprecated and ignored (the shuffle is always full and
            holds indices, not images).
        subset: use only the first ``subset`` training images (before the
            validation split), for quick runs.
        stratify: keep the class proportions in the validation split.
        tfds_data_dir: see :func:`load_arrays`.
        tfds_manual_dir: see :func:`load_arrays`.

    Returns:
        :class:`Splits` with ``train``, ``val`` (None when ``validation_split`` is 0),
        ``test``, ``info``, ``epoch`` and ``train_ordered``.

    Raises:
        DataNotFoundError: the dataset is nowhere to be found.
        DataFormatError: the dataset file is damaged.
        ValueError: an argument is out of range.

    Example:

    ```python
    from keras_effcnn import augment, data

    splits = data.load("cifar10", batch_size=256, validation_split=0.1,
                       augment=[augment.random_crop_flip(seed=0)])
    model.fit(splits.train, validation_data=splits.val, epochs=10,
              callbacks=[splits.epoch_callback()])
    ```
    """
    spec = _spec(name)
    augment = _check_pipeline_args(batch_size, augment, shuffle_buffer)
    validation_split = check_float("validation_split", validation_split, 0.0, 1.0,
                                   low_inclusive=True, high_inclusive=False)
    if subset is not None:
        subset = check_int("subset", subset, 1)
    (x_train, y_train), (x_test, y_test) = load_arrays(
        name, data_dir, source, tfds_data_dir=tfds_data_dir, tfds_manual_dir=tfds_manual_dir)
    if subset is not None:
        if subset > len(x_train):
            raise ValueError(f"`subset` must be at most the {len(x_train)} training images of "
                             f"{name}; got {subset}")
        x_train, y_train = x_train[:subset], y_train[:subset]
    x_val = y_val = None
    if validation_split > 0:
        val_idx = _validation_indices(y_train, validation_split, seed, stratify)
        keep = np.ones(len(x_train), bool)
        keep[val_idx] = False
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[keep], y_train[keep]

    common = dict(num_classes=spec.num_classes, batch_size=batch_size, one_hot=one_hot, seed=seed)
    epoch = new_epoch_variable()
    train_images, train_labels = tf.convert_to_tensor(x_train), tf.convert_to_tensor(y_train)
    train = _pipeline(x_train, y_train, shuffle=True, augment=augment, epoch=epoch, images=train_images,
                      labels=train_labels, **common)
    train_ordered = _pipeline(x_train, y_train, shuffle=False, augment=(), images=train_images,
                              labels=train_labels, **common)
    val = None if x_val is None else _pipeline(x_val, y_val, shuffle=False, augment=(), **common)
    test = _pipeline(x_test, y_test, shuffle=False, augment=(), **common)
    counts = {"train": len(x_train), "val": 0 if x_val is None else len(x_val), "test": len(x_test)}
    info = DataInfo(name=spec.name, num_classes=spec.num_classes, input_shape=spec.input_shape,
                    label_names=spec.label_names, counts=counts,
                    steps_per_epoch=-(-len(x_train) // batch_size), mean=spec.mean, std=spec.std)
    return Splits(train=train, val=val, test=test, info=info, epoch=epoch, train_ordered=train_ordered)


def representative_images(
    name: str,
    data_dir: str | os.PathLike | None = None,
    n: int = 200,
    seed: int = 0,
    *,
    source: str = "auto",
) -> np.ndarray:
    """A seeded random sample of real training images, for int8 TFLite calibration.

    Args:
        name: one of ``DATASETS``.
        data_dir: see :func:`load_arrays`.
        n: number of images, at most the training-set size.
        seed: which images are drawn.
        source: see :func:`load_arrays`.

    Returns:
        float32 ``(n, H, W, C)`` array in ``[0, 1]``.

    Example:

    ```python
    calib = representative_images("cifar10", n=500)
    ```
    """
    _spec(name)
    check_int("n", n, 1)
    (x_train, _), _ = load_arrays(name, data_dir, source)
    if n > len(x_train):
        raise ValueError(f"`n` must be at most the {len(x_train)} training images of {name}; got {n}")
    idx = np.random.default_rng(seed).choice(len(x_train), size=n, replace=False)
    return x_train[idx].astype(np.float32) / np.float32(255.0)

"""Dataset sources and validation: local ``.npz`` files, tensorflow-datasets, ``keras.datasets``.

:func:`load_arrays` returns validated, read-only NumPy arrays (cached in-process);
:func:`validate_arrays` checks a user's images and labels with the same rules.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from keras_effcnn.data.registry import (
    DATASETS,
    ENV_DATA_DIR,
    ENV_TFDS_MANUAL_DIR,
    NPZ_KEYS,
    SOURCES,
    DataFormatError,
    DataNotFoundError,
    DatasetSpec,
    _spec,
)
from keras_effcnn.layers._validation import check_choice, check_int

__all__ = ["clear_cache", "load_arrays", "representative_images", "validate_arrays"]

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


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

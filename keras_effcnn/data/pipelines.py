"""Training, validation and test pipelines as ``tf.data``: epoch-pure shuffling and augmentation."""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_effcnn.augment import Augmentation
from keras_effcnn.data.registry import _spec
from keras_effcnn.data.sources import _checked, load_arrays
from keras_effcnn.layers._validation import check_float, check_int

__all__ = ["DataInfo", "EpochSetter", "Splits", "as_dataset", "load", "new_epoch_variable"]

BatchMap = Callable[[Any, Any], tuple[Any, Any]]


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

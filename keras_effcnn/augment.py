"""Batched, vectorized, reproducible ``tf.data`` augmentations: Mixup, Cutout,
random crop + horizontal flip (CIFAR), random shift (MNIST) and random brightness.

Each factory returns a callable to ``map`` over a *batched* dataset of
``(images, labels[, sample_weight])`` with images ``[batch, height, width,
channels]`` (float, channels-last). The whole batch is augmented by a handful of
vectorized ops, with an independent draw per image.

Randomness is stateless: every call draws a fresh ``[2]`` seed from the
augmentation's own ``tf.random.Generator.from_seed(seed)`` (one draw per batch,
so a new epoch gets new augmentations) and all sampling is done by
``tf.random.stateless_*`` ops from that seed. Two pipelines built with the same
seeds therefore produce identical batches, whatever the global TF seed.
``ds.map(aug)`` must run sequentially for that (the default); :func:`apply`
draws the seeds sequentially and then runs the heavy part in parallel,
reproducibly.

Label smoothing is not an augmentation here: use
``keras.losses.CategoricalCrossentropy(label_smoothing=eps)``; with Mixup it
smooths the mixed soft target, ``(1 - eps) * mix + eps / K``.
"""

from __future__ import annotations

import tensorflow as tf

FILL_MODES = ("zero", "mean")
PAD_MODES = ("constant", "reflect")
MIXUP_MODES = ("batch", "sample")


def _static_hw(images: tf.Tensor, who: str) -> tuple:
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(
            f"{who} expects batched images [batch, height, width, channels]; "
            f"received a tensor of shape {images.shape}. Batch the dataset before mapping."
        )
    return images.shape[1], images.shape[2]


class Augmentation:
    """Base class: a seeded stream of per-batch seeds around a stateless map.

    Subclasses implement :meth:`stateless`. Calling the object draws the next seed.

    Args:
        seed: integer seed of this augmentation's stream; ``None`` for a
            non-reproducible stream.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed
        # Created eagerly: tf.data cannot create variables while tracing a map.
        self._generator = (
            tf.random.Generator.from_non_deterministic_state()
            if seed is None
            else tf.random.Generator.from_seed(seed)
        )

    def next_seed(self) -> tf.Tensor:
        """The next ``[2]`` int64 seed of the stream."""
        return self._generator.make_seeds(1)[:, 0]

    def stateless(self, images, labels, seed):
        """Augment one batch deterministically from ``seed``; returns ``(images, labels)``."""
        raise NotImplementedError

    def __call__(self, images, labels, *rest):
        images, labels = self.stateless(images, labels, self.next_seed())
        return (images, labels, *rest)


class Mixup(Augmentation):
    """Mixup (Zhang et al., ICLR 2018, arXiv 1710.09412); see :func:`mixup`."""

    def __init__(self, alpha: float = 0.2, mode: str = "batch", seed: int | None = None):
        if not alpha > 0:
            raise ValueError(f"`alpha` must be > 0; received alpha={alpha!r}.")
        if mode not in MIXUP_MODES:
            raise ValueError(f"`mode` must be one of {list(MIXUP_MODES)}; received mode={mode!r}.")
        super().__init__(seed)
        self.alpha = float(alpha)
        self.mode = mode

    def sample(self, batch_size, seed):
        """``lam ~ Beta(alpha, alpha)`` for each sample (``[batch_size]`` float64, all
        equal in ``"batch"`` mode) and the partner permutation."""
        s_a, s_b, s_perm = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        draws = [batch_size] if self.mode == "sample" else [1]
        # Beta from two Gammas, in float64 so tiny alphas cannot underflow both to 0.
        g_a = tf.random.stateless_gamma(draws, s_a, alpha=self.alpha, dtype=tf.float64)
        g_b = tf.random.stateless_gamma(draws, s_b, alpha=self.alpha, dtype=tf.float64)
        total = g_a + g_b
        lam = tf.where(total > 0, g_a / tf.where(total > 0, total, 1.0), 0.5)
        lam = tf.broadcast_to(lam, [batch_size])
        perm = tf.argsort(tf.random.stateless_uniform([batch_size], s_perm))
        return lam, perm

    def stateless(self, images, labels, seed):
        _static_hw(images, "mixup")
        if labels.shape.rank is not None and labels.shape.rank != 2:
            raise ValueError(
                f"mixup needs one-hot (or soft) labels of shape [batch, classes]; received labels "
                f"of shape {labels.shape}. Convert integer labels with tf.one_hot first."
            )
        if not images.dtype.is_floating:
            images = tf.cast(images, tf.float32)
        labels = tf.cast(labels, images.dtype if labels.dtype.is_floating else tf.float32)
        lam, perm = self.sample(tf.shape(images)[0], seed)
        lam_x = tf.reshape(tf.cast(lam, images.dtype), [-1, 1, 1, 1])
        lam_y = tf.reshape(tf.cast(lam, labels.dtype), [-1, 1])
        images = lam_x * images + (1.0 - lam_x) * tf.gather(images, perm)
        labels = lam_y * labels + (1.0 - lam_y) * tf.gather(labels, perm)
        return images, labels


class Cutout(Augmentation):
    """Cutout (DeVries & Taylor 2017, arXiv 1708.04552); see :func:`cutout`."""

    def __init__(self, length: int, fill: str = "zero", seed: int | None = None):
        if not (length >= 1 and float(length).is_integer()):
            raise ValueError(f"`length` must be an integer >= 1; received length={length!r}.")
        if fill not in FILL_MODES:
            raise ValueError(f"`fill` must be one of {list(FILL_MODES)}; received fill={fill!r}.")
        super().__init__(seed)
        self.length = int(length)
        self.fill = fill

    @staticmethod
    def sample_centers(batch_size, height, width, seed):
        """Square centers ``(cy, cx)``, uniform over the image's pixels."""
        s_y, s_x = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        cy = tf.random.stateless_uniform([batch_size], s_y, minval=0, maxval=height, dtype=tf.int32)
        cx = tf.random.stateless_uniform([batch_size], s_x, minval=0, maxval=width, dtype=tf.int32)
        return cy, cx

    def mask(self, cy, cx, height, width):
        """``[batch, height, width, 1]`` booleans: rows ``[cy - L//2, cy - L//2 + L)``
        times the same columns around ``cx``, clipped by the image border."""
        top, left = cy - self.length // 2, cx - self.length // 2
        rows, cols = tf.range(height)[None, :], tf.range(width)[None, :]
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + self.length)
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + self.length)
        return (in_rows[:, :, None] & in_cols[:, None, :])[..., None]

    def stateless(self, images, labels, seed):
        height, width = _static_hw(images, "cutout")
        for side, value in (("height", height), ("width", width)):
            if value is not None and self.length > value:
                raise ValueError(
                    f"`length` must be in [1, {value}] (the image {side}); received length={self.length}."
                )
        shape = tf.shape(images)
        height = height or shape[1]
        width = width or shape[2]
        cy, cx = self.sample_centers(shape[0], height, width, seed)
        mask = self.mask(cy, cx, height, width)
        if self.fill == "zero":
            fill = tf.zeros([], images.dtype)
        else:
            fill = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        return tf.where(mask, fill, images), labels


class RandomCropFlip(Augmentation):
    """Pad, random crop back to size, optional horizontal flip; see :func:`random_crop_flip`."""

    def __init__(self, padding: int = 4, flip: bool = True, mode: str = "constant", seed: int | None = None):
        if not (padding >= 0 and float(padding).is_integer()):
            raise ValueError(f"`padding` must be an integer >= 0; received padding={padding!r}.")
        if mode not in PAD_MODES:
            raise ValueError(f"`mode` must be one of {list(PAD_MODES)}; received mode={mode!r}.")
        super().__init__(seed)
        self.padding = int(padding)
        self.flip = bool(flip)
        self.mode = mode

    def sample(self, batch_size, seed):
        """Crop offsets ``(oy, ox)`` in ``[0, 2 * padding]`` and flip flags."""
        s_y, s_x, s_f = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        span = 2 * self.padding + 1
        oy = tf.random.stateless_uniform([batch_size], s_y, minval=0, maxval=span, dtype=tf.int32)
        ox = tf.random.stateless_uniform([batch_size], s_x, minval=0, maxval=span, dtype=tf.int32)
        flips = tf.random.stateless_uniform([batch_size], s_f) < 0.5
        return oy, ox, flips & self.flip

    def stateless(self, images, labels, seed):
        height, width = _static_hw(images, "random_crop_flip")
        p = self.padding
        if self.mode == "reflect":
            for side, value in (("height", height), ("width", width)):
                if value is not None and p >= value:
                    raise ValueError(
                        f"`padding` must be < the image {side} ({value}) with mode='reflect'; received padding={p}."
                    )
        shape = tf.shape(images)
        height = height or shape[1]
        width = width or shape[2]
        if p:
            images = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], mode=self.mode.upper())
        oy, ox, flips = self.sample(shape[0], seed)
        rows = oy[:, None] + tf.range(height)[None, :]
        cols = tf.where(flips[:, None], tf.range(width - 1, -1, -1)[None, :], tf.range(width)[None, :])
        cols = ox[:, None] + cols
        # Crop and flip as two batched gathers: rows, then (possibly reversed) columns.
        images = tf.gather(images, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
        return images, labels


class RandomBrightness(Augmentation):
    """Add one random offset to every pixel of an image; see :func:`random_brightness`."""

    def __init__(self, max_delta: float, seed: int | None = None):
        if not 0 < max_delta <= 1:
            raise ValueError(f"`max_delta` must be in (0, 1] (images are in [0, 1]); received max_delta={max_delta!r}.")
        super().__init__(seed)
        self.max_delta = float(max_delta)

    def stateless(self, images, labels, seed):
        _static_hw(images, "random_brightness")
        if not images.dtype.is_floating:
            raise ValueError(f"random_brightness expects float images in [0, 1]; received dtype {images.dtype.name}. "
                             "Scale integer images to [0, 1] first.")
        delta = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], seed, minval=-self.max_delta,
                                            maxval=self.max_delta, dtype=images.dtype)
        return tf.clip_by_value(images + delta, 0.0, 1.0), labels


def mixup(alpha: float = 0.2, mode: str = "batch", seed: int | None = None) -> Mixup:
    """Mixup for batched ``(images, one_hot_labels)``.

    Each sample ``i`` is mixed with sample ``perm[i]`` of a random permutation of
    the batch: ``x = lam_i * x_i + (1 - lam_i) * x_perm[i]`` and the labels
    identically, with ``lam ~ Beta(alpha, alpha)`` drawn as ``G_a / (G_a + G_b)``
    from two ``Gamma(alpha)`` samples. With ``mode="batch"`` (the default, and what
    the recipes use) one ``lam`` is drawn per batch and shared by all its samples,
    as in Zhang et al.'s reference code (``facebookresearch/mixup-cifar10``) and
    timm's default; with ``mode="sample"`` every sample draws its own ``lam_i``
    (timm's ``"elem"``), which lowers the variance of the mixing within a batch.
    Mixed labels are soft and still sum to one. Integer images are cast to float32.

    Args:
        alpha: Beta concentration, ``> 0`` (0.2-0.4 for CIFAR; 1.0 is uniform).
        mode: ``"batch"`` (one ``lam`` per batch) or ``"sample"`` (one per sample).
        seed: seed of the augmentation stream.

    Returns:
        A :class:`Mixup` map function.

    Example:
        >>> ds = tf.data.Dataset.from_tensor_slices((tf.zeros([8, 4, 4, 3]), tf.one_hot(tf.range(8) % 2, 2)))
        >>> x, y = next(iter(ds.batch(8).map(mixup(0.2, seed=1))))
        >>> bool(tf.reduce_all(tf.abs(tf.reduce_sum(y, 1) - 1) < 1e-6))
        True
    """
    return Mixup(alpha, mode, seed)


def cutout(length: int, fill: str = "zero", seed: int | None = None) -> Cutout:
    """Cutout: blank one ``length x length`` square per image.

    The square is centered at a pixel drawn uniformly over the whole image (rows
    ``[cy - length//2, cy - length//2 + length)``, same for columns), so it may
    overhang the border and is clipped there, as in DeVries & Taylor. For an even
    ``length`` this is exactly their code (rows ``[cy - L//2, cy + L//2)``); for an
    odd ``length`` their code cuts ``2 * (L//2) = L - 1`` rows and columns, i.e. an
    ``(L-1) x (L-1)`` square, whereas here ``length`` is always the side that is
    cut (the extra row and column fall below and right of the center). The
    recipes use even lengths (8 on MNIST, 16 on CIFAR-10), where both agree. It is set to
    0 (``"zero"``) or to the image's own per-channel mean (``"mean"``). Unlike
    ``keras.layers.RandomErasing``, size and shape are fixed and only the
    position is random. Labels pass through.

    Args:
        length: side of the square in pixels, in ``[1, min(height, width)]``
            (checked when the map is traced). 16 for CIFAR-10, 8 for MNIST.
        fill: ``"zero"`` or ``"mean"``.
        seed: seed of the augmentation stream.

    Returns:
        A :class:`Cutout` map function.

    Example:
        >>> ds = tf.data.Dataset.from_tensor_slices((tf.ones([4, 8, 8, 1]), tf.zeros([4, 2])))
        >>> x, _ = next(iter(ds.batch(4).map(cutout(4, seed=0))))
        >>> x.shape
        TensorShape([4, 8, 8, 1])
    """
    return Cutout(length, fill, seed)


def random_crop_flip(
    padding: int = 4, flip: bool = True, mode: str = "constant", seed: int | None = None
) -> RandomCropFlip:
    """The standard CIFAR augmentation: pad, random crop, horizontal flip.

    Each image is padded by ``padding`` pixels on every side (zeros for
    ``"constant"``, mirrored for ``"reflect"``), cropped back to its size at an
    offset uniform in ``[0, 2 * padding]`` in each direction, and flipped left-right
    with probability 1/2 (if ``flip``).

    Args:
        padding: pixels of padding, ``>= 0`` (``< side`` for ``"reflect"``).
        flip: apply random horizontal flips.
        mode: ``"constant"`` (zero padding) or ``"reflect"``.
        seed: seed of the augmentation stream.

    Returns:
        A :class:`RandomCropFlip` map function.

    Example:
        >>> ds = tf.data.Dataset.from_tensor_slices((tf.ones([4, 32, 32, 3]), tf.zeros([4, 10])))
        >>> x, _ = next(iter(ds.batch(4).map(random_crop_flip(4, seed=0))))
        >>> x.shape
        TensorShape([4, 32, 32, 3])
    """
    return RandomCropFlip(padding, flip, mode, seed)


def random_shift(max_shift: int = 2, seed: int | None = None) -> RandomCropFlip:
    """Random translation by up to ``max_shift`` pixels with zero fill (MNIST).

    The same as ``random_crop_flip(padding=max_shift, flip=False)``: digits are not
    mirror-symmetric.

    Args:
        max_shift: largest shift in pixels along each axis, ``>= 0``.
        seed: seed of the augmentation stream.

    Example:
        >>> shift = random_shift(2, seed=0)
    """
    if not (max_shift >= 0 and float(max_shift).is_integer()):
        raise ValueError(f"`max_shift` must be an integer >= 0; received max_shift={max_shift!r}.")
    return RandomCropFlip(max_shift, flip=False, mode="constant", seed=seed)


def random_brightness(max_delta: float, seed: int | None = None) -> RandomBrightness:
    """Random brightness: ``x -> clip(x + delta, 0, 1)`` with ``delta ~ U(-max_delta, max_delta)`` per image.

    The same offset is added to every pixel and channel of an image, then the image is
    clipped to ``[0, 1]``, as ``keras.layers.RandomBrightness(max_delta, value_range=(0, 1))``
    does. On a grayscale image this is the same kind of change as the robustness report's
    brightness corruption (``keras_effcnn.robustness``: HSV value ``V -> min(V + c, 1)``), so a
    model trained with it is no longer tested out of distribution by that column.

    Args:
        max_delta: largest offset, in ``(0, 1]`` of the image range.
        seed: seed of the augmentation stream.

    Returns:
        A :class:`RandomBrightness` map function.

    Example:
        >>> ds = tf.data.Dataset.from_tensor_slices((tf.zeros([4, 8, 8, 1]), tf.zeros([4, 2])))
        >>> x, _ = next(iter(ds.batch(4).map(random_brightness(0.2, seed=0))))
        >>> bool(tf.reduce_all(x <= 0.2))
        True
    """
    return RandomBrightness(max_delta, seed)


def apply(ds: tf.data.Dataset, *augmentations: Augmentation, num_parallel_calls: int | None = None) -> tf.data.Dataset:
    """Map augmentations, in order, over a batched dataset of ``(images, labels[, w])``.

    The per-batch seeds are drawn by a cheap sequential map; the augmentations
    themselves then run in one map that may be parallel (``num_parallel_calls``)
    while staying deterministic and reproducible.

    Args:
        ds: batched dataset.
        *augmentations: :class:`Augmentation` objects, e.g. ``random_crop_flip(seed=1),
            cutout(16, seed=2), mixup(0.2, seed=3)``.
        num_parallel_calls: parallelism of the augmentation map (``None``: sequential).

    Returns:
        The augmented dataset.

    Example:
        >>> ds = tf.data.Dataset.from_tensor_slices((tf.ones([8, 32, 32, 3]), tf.one_hot(tf.range(8) % 10, 10)))
        >>> ds = apply(ds.batch(4), random_crop_flip(seed=1), cutout(16, seed=2), mixup(0.2, seed=3))
    """
    for aug in augmentations:
        if not isinstance(aug, Augmentation):
            raise ValueError(f"`augmentations` must be Augmentation objects; received {aug!r}.")
    if not augmentations:
        return ds

    def draw_seeds(*batch):
        return batch, tuple(aug.next_seed() for aug in augmentations)

    def augment(batch, seeds):
        images, labels, *rest = batch
        for aug, seed in zip(augmentations, seeds):
            images, labels = aug.stateless(images, labels, seed)
        return (images, labels, *rest)

    ds = ds.map(draw_seeds)
    if num_parallel_calls is None:
        return ds.map(augment)
    return ds.map(augment, num_parallel_calls=num_parallel_calls, deterministic=True)


__all__ = [
    "Augmentation",
    "Mixup",
    "Cutout",
    "RandomCropFlip",
    "RandomBrightness",
    "mixup",
    "cutout",
    "random_crop_flip",
    "random_shift",
    "random_brightness",
    "apply",
]

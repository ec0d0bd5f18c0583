"""BlurPool: anti-aliased downsampling (Zhang 2019, "Making CNNs shift-invariant again").

A strided max-pool or convolution subsamples without low-pass filtering first,
so high frequencies alias and a one-pixel shift of the input can change the
output a lot. ``BlurPool2D`` blurs every channel with a fixed binomial filter
and then subsamples; put it after a stride-1 max-pool (``blur_max_pool``) or
after a stride-1 convolution to replace their strided versions.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_effcnn.layers._validation import check_choice, check_input_rank, check_int

MAX_FILTER_SIZE = 7
PADDINGS = ("reflect", "zero")


def binomial_kernel(filter_size: int) -> np.ndarray:
    """Return the normalized 2D binomial filter of side ``filter_size``.

    The 1D filter is row ``filter_size - 1`` of Pascal's triangle, e.g.
    ``[1, 2, 1]`` for size 3; the 2D filter is its outer product divided by its
    sum, so it preserves the mean of the image.

    Args:
        filter_size: side of the square filter, 1 to 7.

    Returns:
        A ``float64`` array of shape ``(filter_size, filter_size)`` summing to 1.

    Example:
        >>> binomial_kernel(3) * 16
        array([[1., 2., 1.],
               [2., 4., 2.],
               [1., 2., 1.]])
    """
    filter_size = check_int("filter_size", filter_size, 1, MAX_FILTER_SIZE)
    row = np.array([math.comb(filter_size - 1, k) for k in range(filter_size)], dtype=np.float64)
    kernel = np.outer(row, row)
    return kernel / kernel.sum()


def _pad_amounts(filter_size: int) -> tuple[int, int]:
    # Zhang's implementation pads floor((f-1)/2) before and ceil((f-1)/2) after,
    # so a "valid" strided convolution yields ceil(size / stride) outputs.
    return (filter_size - 1) // 2, filter_size // 2


@keras.saving.register_keras_serializable(package="keras_effcnn")
class BlurPool2D(keras.layers.Layer):
    """Anti-aliased downsampling: per-channel binomial blur, then subsampling.

    The filter is a constant, not a weight: the layer has no trainable and no
    non-trainable weights. It runs as one padding op (``PAD`` / ``MIRROR_PAD``;
    only the border pixels the strided windows read are padded) and one
    ``DEPTHWISE_CONV_2D`` in TFLite, and computes in the input's dtype
    (so it works under ``mixed_float16``).

    Reference: R. Zhang, "Making Convolutional Networks Shift-Invariant Again",
    ICML 2019, arXiv:1904.11486.

    Args:
        filter_size: side of the binomial filter, 1 to 7. 1 is plain
            subsampling, 2 is a box filter, 3 (``[1, 2, 1]``) is Zhang's
            recommended trade-off, larger sizes blur more.
        strides: subsampling factor, an integer >= 1. With 1 the layer is a
            pure blur that keeps the spatial size.
        padding: ``"reflect"`` (mirror the border without repeating the edge
            pixel, as Zhang does) or ``"zero"``. The input is padded by
            ``floor((f-1)/2)`` before and ``ceil((f-1)/2)`` after, so the output
            spatial size is ``ceil(size / strides)``. Reflect padding needs
            every spatial size to exceed ``floor(filter_size / 2)``.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Input shape:
        ``(batch, H, W, C)`` (channels-last), ``C`` known.

    Output shape:
        ``(batch, ceil(H / strides), ceil(W / strides), C)``.

    Example:
        >>> import keras
        >>> from keras_effcnn.layers import BlurPool2D
        >>> x = keras.Input((32, 32, 16))
        >>> y = keras.layers.MaxPooling2D(2, strides=1)(x)  # dense max, no aliasing yet
        >>> y = BlurPool2D(filter_size=3, strides=2)(y)      # low-pass, then subsample
        >>> tuple(y.shape)
        (None, 16, 16, 16)
    """

    def __init__(
        self,
        filter_size: int = 3,
        strides: int = 2,
        padding: str = "reflect",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.filter_size = check_int("filter_size", filter_size, 1, MAX_FILTER_SIZE)
        self.strides = check_int("strides", strides, 1)
        self.padding = check_choice("padding", padding, PADDINGS)
        self._kernel: np.ndarray | None = None

    def build(self, input_shape) -> None:
        shape = check_input_rank(type(self).__name__, input_shape)
        if self.padding == "reflect":
            _, after = _pad_amounts(self.filter_size)
            for size in shape[1:3]:
                if size is not None and size <= after:
                    raise ValueError(
                        f"`padding`='reflect' with filter_size={self.filter_size} needs "
                        f"H and W > {after}; got input shape {shape}. Use padding='zero' "
                        "or a smaller filter_size."
                    )
        channels = shape[-1]
        # (f, f, C, 1): one copy of the filter per channel, channel multiplier 1.
        kernel = binomial_kernel(self.filter_size).astype(np.float32)
        self._kernel = np.ascontiguousarray(
            np.broadcast_to(kernel[:, :, None, None], kernel.shape + (channels, 1))
        )

    @property
    def kernel(self) -> np.ndarray | None:
        """The constant ``(f, f, C, 1)`` depthwise filter (``None`` before build)."""
        return self._kernel

    def _trimmed_after(self, size, after: int) -> int:
        # The strided windows never read past (outputs - 1) * strides + filter_size padded
        # pixels: pad only those (for filter 3, stride 2 and an even size, none after), which
        # is exact and saves padding work (MirrorPad's gradient is slow on CPU).
        if size is None:
            return after
        before = self.filter_size - 1 - after
        outputs = -(-size // self.strides)
        return max(0, min(after, (outputs - 1) * self.strides + self.filter_size - before - size))

    def call(self, inputs):
        before, after = _pad_amounts(self.filter_size)
        after_h = self._trimmed_after(inputs.shape[1], after)
        after_w = self._trimmed_after(inputs.shape[2], after)
        x = inputs
        if before > 0 or after_h > 0 or after_w > 0:
            x = ops.pad(
                x,
                [[0, 0], [before, after_h], [before, after_w], [0, 0]],
                mode="reflect" if self.padding == "reflect" else "constant",
            )
        kernel = ops.cast(self._kernel, x.dtype)
        return ops.depthwise_conv(
            x, kernel, strides=self.strides, padding="valid", data_format="channels_last"
        )

    def compute_output_shape(self, input_shape) -> tuple:
        batch, height, width, channels = check_input_rank(type(self).__name__, input_shape)

        def reduced(size):
            return None if size is None else -(-size // self.strides)

        return (batch, reduced(height), reduced(width), channels)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            filter_size=self.filter_size, strides=self.strides, padding=self.padding
        )
        return config


def blur_max_pool(
    pool_size: int = 2,
    filter_size: int = 3,
    strides: int = 2,
    padding: str = "reflect",
    name: str | None = None,
) -> keras.Sequential:
    """Zhang's ``MaxBlurPool``: a stride-1 max-pool followed by ``BlurPool2D``.

    It replaces ``MaxPooling2D(pool_size, strides=strides)``: the dense max is
    evaluated at every position, then blurred and subsampled. For even input
    sizes the output size equals that of the plain strided max-pool.

    Args:
        pool_size: max-pool window, an integer >= 1 (``"valid"`` padding,
            stride 1, as in Zhang's implementation).
        filter_size: binomial filter size of the ``BlurPool2D``, 1 to 7.
        strides: subsampling factor, an integer >= 1.
        padding: ``BlurPool2D`` border mode, ``"reflect"`` or ``"zero"``.
        name: optional name of the returned ``keras.Sequential``.

    Returns:
        A ``keras.Sequential`` usable as a layer in any model.

    Example:
        >>> import keras
        >>> from keras_effcnn.layers import blur_max_pool
        >>> x = keras.Input((28, 28, 8))
        >>> tuple(blur_max_pool()(x).shape)
        (None, 14, 14, 8)
    """
    pool_size = check_int("pool_size", pool_size, 1)
    blur = BlurPool2D(filter_size=filter_size, strides=strides, padding=padding)
    return keras.Sequential(
        [keras.layers.MaxPooling2D(pool_size, strides=1, padding="valid"), blur], name=name
    )

"""Squeeze-and-Excitation channel attention (Hu et al. 2018)."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_effcnn.layers._validation import (
    check_choice,
    check_float,
    check_input_rank,
    check_int,
    resolve_activation,
)

GATES = ("sigmoid", "hard_sigmoid")


def latent_channels_for(channels: int, ratio: float, min_channels: int = 1) -> int:
    """Bottleneck width ``max(min_channels, round(channels * ratio))``.

    Rounds half up (not Python's round-half-to-even) so that, e.g., 10
    channels at ratio 0.25 give 3, never 2.

    Args:
        channels: input channel count ``C``.
        ratio: reduction ratio in ``(0, 1]``.
        min_channels: floor on the result, >= 1.

    Returns:
        The number of channels of the squeeze bottleneck.

    Example:
        >>> latent_channels_for(64, 0.25)
        16
    """
    return max(min_channels, int(math.floor(channels * ratio + 0.5)))


def _hard_sigmoid(x):
    # relu6(x + 3) / 6: piecewise linear, so it quantizes to int8 without a
    # lookup table and maps to ADD/RELU6/MUL builtins in TFLite.
    return ops.relu6(x + 3.0) * (1.0 / 6.0)


@keras.saving.register_keras_serializable(package="keras_effcnn")
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-Excitation: rescale each channel by a learned gate.

    ``GAP -> 1x1 conv to r channels -> activation -> 1x1 conv to C channels
    -> gate -> multiply with the input``. The two 1x1 convolutions act on the
    ``(batch, 1, 1, C)`` pooled tensor, i.e. they are dense layers, and export
    as ``CONV_2D`` in TFLite. Trainable parameters: ``C*r + r + r*C + C`` with
    biases (``2*C*r`` without).

    Reference: J. Hu, L. Shen, G. Sun, "Squeeze-and-Excitation Networks",
    CVPR 2018, arXiv:1709.01507. ``hard_sigmoid`` gate from A. Howard et al.,
    "Searching for MobileNetV3", ICCV 2019.

    Args:
        ratio: bottleneck width as a fraction of ``C``, in ``(0, 1]``;
            ``r = max(min_channels, round(C * ratio))`` (half up).
        latent_channels: explicit bottleneck width ``r`` >= 1; overrides
            ``ratio`` when given.
        min_channels: lower bound on ``r`` when it comes from ``ratio``, >= 1.
        gate: ``"sigmoid"`` or ``"hard_sigmoid"`` (``relu6(x + 3) / 6``, the
            int8-friendly one).
        activation: activation of the bottleneck, any Keras activation
            identifier (default ``"relu"``), or ``None`` for linear.
        use_bias: whether the two 1x1 convolutions have biases.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Input shape:
        ``(batch, H, W, C)`` (channels-last), ``C`` known.

    Output shape:
        Same as the input.

    Example:
        >>> import keras
        >>> from keras_effcnn.layers import SqueezeExcite
        >>> x = keras.Input((8, 8, 32))
        >>> se = SqueezeExcite(ratio=0.25, gate="hard_sigmoid")
        >>> tuple(se(x).shape), se.count_params()  # 32*8 + 8 + 8*32 + 32
        ((None, 8, 8, 32), 552)
    """

    def __init__(
        self,
        ratio: float = 0.25,
        latent_channels: int | None = None,
        min_channels: int = 1,
        gate: str = "sigmoid",
        activation="relu",
        use_bias: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.ratio = check_float("ratio", ratio, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
        self.latent_channels = (
            None if latent_channels is None else check_int("latent_channels", latent_channels, 1)
        )
        self.min_channels = check_int("min_channels", min_channels, 1)
        self.gate = check_choice("gate", gate, GATES)
        self._activation_fn, self.activation = resolve_activation("activation", activation)
        self.use_bias = bool(use_bias)
        self.reduce = None
        self.expand = None

    def build(self, input_shape) -> None:
        shape = check_input_rank(type(self).__name__, input_shape)
        channels = shape[-1]
        latent = self.latent_channels or latent_channels_for(
            channels, self.ratio, self.min_channels
        )
        self.reduce = keras.layers.Conv2D(
            latent, 1, activation=self._activation_fn, use_bias=self.use_bias,
            dtype=self.dtype_policy, name="reduce",
        )
        self.expand = keras.layers.Conv2D(
            channels, 1, use_bias=self.use_bias, dtype=self.dtype_policy, name="expand"
        )
        self.reduce.build((shape[0], 1, 1, channels))
        self.expand.build((shape[0], 1, 1, latent))

    def call(self, inputs):
        squeezed = ops.mean(inputs, axis=(1, 2), keepdims=True)
        logits = self.expand(self.reduce(squeezed))
        gate = ops.sigmoid(logits) if self.gate == "sigmoid" else _hard_sigmoid(logits)
        return inputs * gate

    def compute_output_shape(self, input_shape) -> tuple:
        return check_input_rank(type(self).__name__, input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            ratio=self.ratio,
            latent_channels=self.latent_channels,
            min_channels=self.min_channels,
            gate=self.gate,
            activation=self.activation,
            use_bias=self.use_bias,
        )
        return config

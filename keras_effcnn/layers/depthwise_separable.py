"""Depthwise-separable convolution block with optional Squeeze-Excite and residual."""

from __future__ import annotations

import keras

from keras_effcnn.layers._validation import (
    check_choice,
    check_dropout,
    check_float,
    check_input_rank,
    check_int,
    resolve_activation,
)
from keras_effcnn.layers.conv_bn_act import (
    ORDERS,
    ConvBNAct,
    apply_norm_act,
    check_batch_norm_args,
    check_conv_args,
    make_norm_act,
)
from keras_effcnn.layers.squeeze_excite import GATES, SqueezeExcite


@keras.saving.register_keras_serializable(package="keras_effcnn")
class DepthwiseSeparableBlock(keras.layers.Layer):
    """Depthwise ``k x k`` conv, BN/act, optional SE, pointwise ``1 x 1`` conv, BN/act.

    ``depthwise -> BN/act -> [SqueezeExcite] -> pointwise -> BN/act ->
    dropout -> [+ input]``, with BN/act in the order given by ``order``
    (``"bn_act"`` or ``"act_bn"``, see ``ConvBNAct``). The SE acts on the
    depthwise output (``C_in`` channels), as in MobileNetV3 / EfficientNet.

    Trainable parameters, with ``C = C_in``, ``F = filters``, ``b = use_bias``:
    ``k*k*C + b*C + 2*C`` (depthwise + BN) ``+ SE(C)`` ``+ C*F + b*F + 2*F``
    (pointwise + BN), where ``SE(C) = 2*C*r + r + C`` with
    ``r = max(1, round(C * se_ratio))``; ``bn_scale=False`` removes ``C + F``
    (the two BatchNorms' gammas).

    References: L. Sifre, "Rigid-motion scattering for image classification",
    2014; A. Howard et al., "MobileNets", arXiv:1704.04861; F. Chollet,
    "Xception", CVPR 2017.

    Args:
        filters: output channels of the pointwise convolution, >= 1.
        kernel_size: depthwise kernel side, >= 1.
        strides: depthwise stride, >= 1.
        padding: ``"same"`` or ``"valid"``.
        dilation_rate: depthwise dilation, >= 1 (not with ``strides`` > 1).
        activation: activation after both convolutions; any Keras activation
            identifier or ``None``.
        order: ``"bn_act"`` or ``"act_bn"``.
        se_ratio: ``None`` for no Squeeze-Excite, else its ratio in ``(0, 1]``.
        se_gate: SE gate, ``"sigmoid"`` or ``"hard_sigmoid"``.
        residual: add the input to the output; needs ``strides == 1``,
            ``C_in == filters`` and a shape-preserving padding.
        dropout: dropout rate before the residual add, in ``[0, 1)``.
        bn_momentum: BatchNorm momentum in ``[0, 1]`` (0.9 = PyTorch's default).
        bn_epsilon: BatchNorm epsilon, > 0.
        bn_scale: the BatchNorms' gammas; see ``ConvBNAct`` (without them the
            residual branch cannot scale itself against the input).
        use_bias: biases on the two convolutions (off: BatchNorm follows).
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Input shape:
        ``(batch, H, W, C_in)`` (channels-last).

    Output shape:
        ``(batch, H', W', filters)``; ``H' = ceil(H / strides)`` with ``"same"``.

    Example:
        >>> import keras
        >>> from keras_effcnn.layers import DepthwiseSeparableBlock
        >>> x = keras.Input((16, 16, 32))
        >>> block = DepthwiseSeparableBlock(32, se_ratio=0.25, residual=True)
        >>> tuple(block(x).shape)
        (None, 16, 16, 32)
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int = 3,
        strides: int = 1,
        padding: str = "same",
        dilation_rate: int = 1,
        activation="relu",
        order: str = "bn_act",
        se_ratio: float | None = None,
        se_gate: str = "sigmoid",
        residual: bool = False,
        dropout: float = 0.0,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        bn_scale: bool = True,
        use_bias: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = check_int("filters", filters, 1)
        self.kernel_size, self.strides, self.padding, self.dilation_rate = check_conv_args(
            kernel_size, strides, padding, dilation_rate
        )
        activation_fn, self.activation = resolve_activation("activation", activation)
        self.order = check_choice("order", order, ORDERS)
        self.se_ratio = (
            None
            if se_ratio is None
            else check_float("se_ratio", se_ratio, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
        )
        self.se_gate = check_choice("se_gate", se_gate, GATES)
        self.residual = bool(residual)
        if self.residual and self.strides != 1:
            raise ValueError(
                f"`residual`=True needs strides=1 (the shapes must match); got strides={self.strides}."
            )
        if self.residual and self.padding == "valid" and self.kernel_size > 1:
            raise ValueError(
                "`residual`=True needs padding='same' (or kernel_size=1) so the spatial "
                f"size is kept; got padding='valid', kernel_size={self.kernel_size}."
            )
        self.dropout = check_dropout(dropout)
        self.bn_momentum, self.bn_epsilon = check_batch_norm_args(bn_momentum, bn_epsilon)
        self.bn_scale = bool(bn_scale)
        self.use_bias = bool(use_bias)

        self.depthwise = keras.layers.DepthwiseConv2D(
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            use_bias=self.use_bias,
            dtype=self.dtype_policy,
            name="depthwise",
        )
        self.depthwise_bn, self.depthwise_act = make_norm_act(
            activation_fn, self.bn_momentum, self.bn_epsilon, self.dtype_policy, "depthwise_",
            scale=self.bn_scale,
        )
        self.se = (
            None
            if self.se_ratio is None
            else SqueezeExcite(self.se_ratio, gate=self.se_gate, dtype=self.dtype_policy, name="se")
        )
        self.pointwise = ConvBNAct(
            self.filters,
            1,
            activation=activation_fn,
            order=self.order,
            use_bias=self.use_bias,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            bn_scale=self.bn_scale,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="pointwise",
        )

    def build(self, input_shape) -> None:
        shape = check_input_rank(type(self).__name__, input_shape)
        if self.residual and shape[-1] != self.filters:
            raise ValueError(
                "`residual`=True needs input channels == filters; got input shape "
                f"{shape} and filters={self.filters}."
            )
        self.depthwise.build(shape)
        depthwise_shape = self.depthwise.compute_output_shape(shape)
        self.depthwise_bn.build(depthwise_shape)
        if self.depthwise_act is not None:
            self.depthwise_act.build(depthwise_shape)
        if self.se is not None:
            self.se.build(depthwise_shape)
        self.pointwise.build(depthwise_shape)

    def call(self, inputs, training=None):
        x = apply_norm_act(
            self.depthwise(inputs), self.depthwise_bn, self.depthwise_act, self.order, training
        )
        if self.se is not None:
            x = self.se(x)
        x = self.pointwise(x, training=training)
        return x + inputs if self.residual else x

    def compute_output_shape(self, input_shape) -> tuple:
        shape = check_input_rank(type(self).__name__, input_shape)
        return tuple(self.depthwise.compute_output_shape(shape)[:-1]) + (self.filters,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            activation=self.activation,
            order=self.order,
            se_ratio=self.se_ratio,
            se_gate=self.se_gate,
            residual=self.residual,
            dropout=self.dropout,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            bn_scale=self.bn_scale,
            use_bias=self.use_bias,
        )
        return config

"""ConvBNAct and DepthwiseSeparableBlock against hand-composed stacks of standard Keras layers."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_effcnn.layers import ConvBNAct, DepthwiseSeparableBlock, latent_channels_for


def _randomize(layer: keras.layers.Layer, rng) -> None:
    """Random weights, including BatchNorm moving statistics (variance kept positive)."""
    for variable in layer.weights:
        values = rng.uniform(0.5, 2.0, variable.shape) if "variance" in variable.path else (
            0.5 * rng.standard_normal(variable.shape)
        )
        variable.assign(values.astype("float32"))


def _norm_act(x, order, momentum=0.9, epsilon=1e-5, scale=True):
    norm = keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, scale=scale)
    if order == "bn_act":
        return keras.layers.ReLU()(norm(x)), norm
    return norm(keras.layers.ReLU()(x)), norm


def _trainable(layer) -> int:
    return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)


def _non_trainable(layer) -> int:
    return sum(int(np.prod(w.shape)) for w in layer.non_trainable_weights)


def test_conv_bn_act_parameter_count_formula():
    cases = [
        # (C_in, filters, kernel, groups, use_bias, bn_scale)
        (3, 16, 3, 1, False, True),
        (8, 12, 5, 2, False, True),
        (8, 8, 1, 4, True, True),
        (1, 32, 7, 1, True, True),
        (3, 16, 3, 1, False, False),
    ]
    for c_in, filters, kernel, groups, use_bias, bn_scale in cases:
        block = ConvBNAct(filters, kernel, groups=groups, use_bias=use_bias, bn_scale=bn_scale)
        block.build((None, 16, 16, c_in))
        expected = kernel * kernel * (c_in // groups) * filters + use_bias * filters + (1 + bn_scale) * filters
        assert _trainable(block) == expected, (c_in, filters, kernel, groups, use_bias, bn_scale)
        assert _non_trainable(block) == 2 * filters


def test_depthwise_separable_parameter_count_formula():
    cases = [
        # (C_in, filters, kernel, se_ratio, use_bias, bn_scale)
        (16, 32, 3, None, False, True),
        (16, 16, 5, 0.25, False, True),
        (10, 24, 3, 0.25, True, True),
        (3, 8, 7, 0.5, True, True),
        (10, 24, 3, 0.25, False, False),
    ]
    for c_in, filters, kernel, se_ratio, use_bias, bn_scale in cases:
        block = DepthwiseSeparableBlock(filters, kernel, se_ratio=se_ratio, use_bias=use_bias, bn_scale=bn_scale)
        block.build((None, 12, 12, c_in))
        se = 0
        if se_ratio is not None:
            r = latent_channels_for(c_in, se_ratio)
            se = 2 * c_in * r + r + c_in
        depthwise = kernel * kernel * c_in + use_bias * c_in + (1 + bn_scale) * c_in
        pointwise = c_in * filters + use_bias * filters + (1 + bn_scale) * filters
        assert _trainable(block) == depthwise + se + pointwise, (c_in, filters, kernel, se_ratio)
        assert _non_trainable(block) == 2 * c_in + 2 * filters


@pytest.mark.parametrize("order", ["bn_act", "act_bn"])
def test_conv_bn_act_equals_sequential_of_standard_layers(order):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 9, 9, 6)).astype("float32")
    block = ConvBNAct(8, 3, strides=2, groups=2, order=order, use_bias=True)
    block.build(x.shape)
    _randomize(block, rng)

    inputs = keras.Input(x.shape[1:])
    conv = keras.layers.Conv2D(8, 3, strides=2, padding="same", groups=2, use_bias=True)
    outputs, norm = _norm_act(conv(inputs), order)
    reference = keras.Model(inputs, outputs)
    conv.set_weights(block.conv.get_weights())
    norm.set_weights(block.bn.get_weights())

    np.testing.assert_allclose(block(x, training=False), reference(x, training=False), atol=1e-5)
    np.testing.assert_allclose(block(x, training=True), reference(x, training=True), atol=1e-5)
    # Same momentum (0.9) => same moving statistics after one training-mode call.
    for mine, theirs in zip(block.bn.get_weights(), norm.get_weights()):
        np.testing.assert_allclose(mine, theirs, atol=1e-6)


def test_orders_differ_as_expected():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8, 8, 3)).astype("float32")
    bn_act, act_bn = ConvBNAct(16, order="bn_act"), ConvBNAct(16, order="act_bn")
    bn_act.build(x.shape)
    act_bn.build(x.shape)
    _randomize(bn_act, rng)
    act_bn.set_weights(bn_act.get_weights())
    y_bn_act, y_act_bn = np.asarray(bn_act(x)), np.asarray(act_bn(x))
    # ReLU last => non-negative; BN last => an affine map of non-negative values, so
    # it goes negative wherever beta < 0 dominates.
    assert y_bn_act.min() >= 0.0
    assert y_act_bn.min() < 0.0
    assert np.abs(y_bn_act - y_act_bn).mean() > 0.1
    # act_bn is BN applied to relu(conv(x)), computed by hand from the BN statistics.
    gamma, beta, mean, var = act_bn.bn.get_weights()
    relu_conv = np.maximum(np.asarray(act_bn.conv(x)), 0.0)
    np.testing.assert_allclose(
        y_act_bn, gamma * (relu_conv - mean) / np.sqrt(var + 1e-5) + beta, atol=1e-5
    )


def test_activation_none_is_conv_then_bn():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 6, 3)).astype("float32")
    block = ConvBNAct(4, activation=None)
    block.build(x.shape)
    _randomize(block, rng)
    gamma, beta, mean, var = block.bn.get_weights()
    conv = np.asarray(block.conv(x))
    np.testing.assert_allclose(block(x), gamma * (conv - mean) / np.sqrt(var + 1e-5) + beta, atol=1e-5)
    assert block.act is None


def test_dropout_applies_after_block_in_training_only():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 8, 8, 4)).astype("float32")
    plain, dropped = ConvBNAct(16, activation=None), ConvBNAct(16, activation=None, dropout=0.5)
    plain.build(x.shape)
    dropped.build(x.shape)
    _randomize(plain, rng)
    dropped.set_weights(plain.get_weights())
    np.testing.assert_allclose(dropped(x, training=False), plain(x, training=False), atol=1e-6)
    reference, out = np.asarray(plain(x, training=True)), np.asarray(dropped(x, training=True))
    zeros = out == 0.0
    assert 0.4 < zeros.mean() < 0.6
    np.testing.assert_allclose(out[~zeros], 2.0 * reference[~zeros], rtol=1e-5, atol=1e-6)


def test_kernel_regularizer_reaches_the_convolution():
    block = ConvBNAct(4, kernel_regularizer=keras.regularizers.L2(0.01))
    block(np.ones((1, 5, 5, 2), "float32"))
    kernel = block.conv.kernel.numpy()
    assert len(block.losses) == 1
    np.testing.assert_allclose(float(block.losses[0]), 0.01 * np.sum(kernel**2), rtol=1e-5)


@pytest.mark.parametrize(
    "order, se_ratio, residual, bn_scale",
    [("bn_act", None, False, True), ("act_bn", 0.25, True, True), ("bn_act", 0.5, True, False)],
)
def test_depthwise_separable_equals_composition_of_standard_layers(order, se_ratio, residual, bn_scale):
    rng = np.random.default_rng(4)
    channels = 8
    x = rng.standard_normal((3, 7, 7, channels)).astype("float32")
    block = DepthwiseSeparableBlock(channels, 3, order=order, se_ratio=se_ratio, residual=residual,
                                    bn_scale=bn_scale)
    block.build(x.shape)
    _randomize(block, rng)

    inputs = keras.Input(x.shape[1:])
    depthwise = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)
    h, depthwise_norm = _norm_act(depthwise(inputs), order, scale=bn_scale)
    if se_ratio is not None:
        latent = latent_channels_for(channels, se_ratio)
        reduce = keras.layers.Conv2D(latent, 1, activation="relu")
        expand = keras.layers.Conv2D(channels, 1, activation="sigmoid")
        gate = expand(reduce(keras.layers.GlobalAveragePooling2D(keepdims=True)(h)))
        h = keras.layers.Multiply()([h, gate])
    pointwise = keras.layers.Conv2D(channels, 1, use_bias=False)
    h, pointwise_norm = _norm_act(pointwise(h), order, scale=bn_scale)
    if residual:
        h = keras.layers.Add()([h, inputs])
    reference = keras.Model(inputs, h)

    depthwise.set_weights(block.depthwise.get_weights())
    depthwise_norm.set_weights(block.depthwise_bn.get_weights())
    if se_ratio is not None:
        reduce.set_weights(block.se.reduce.get_weights())
        expand.set_weights(block.se.expand.get_weights())
    pointwise.set_weights(block.pointwise.conv.get_weights())
    pointwise_norm.set_weights(block.pointwise.bn.get_weights())

    np.testing.assert_allclose(block(x, training=False), reference(x, training=False), atol=1e-5)
    np.testing.assert_allclose(block(x, training=True), reference(x, training=True), atol=1e-5)


def test_residual_adds_the_input():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 6, 8)).astype("float32")
    with_skip = DepthwiseSeparableBlock(8, se_ratio=0.25, residual=True)
    without = DepthwiseSeparableBlock(8, se_ratio=0.25, residual=False)
    with_skip.build(x.shape)
    without.build(x.shape)
    _randomize(with_skip, rng)
    without.set_weights(with_skip.get_weights())
    np.testing.assert_allclose(np.asarray(with_skip(x)) - np.asarray(without(x)), x, atol=1e-5)


def test_residual_needs_matching_shapes():
    with pytest.raises(ValueError, match="residual"):
        DepthwiseSeparableBlock(8, strides=2, residual=True)
    with pytest.raises(ValueError, match="residual"):
        DepthwiseSeparableBlock(8, padding="valid", residual=True)
    with pytest.raises(ValueError, match="residual"):
        DepthwiseSeparableBlock(16, residual=True)(np.zeros((1, 6, 6, 8), "float32"))


def test_output_shapes():
    cases = [
        (ConvBNAct(5, 3, strides=2), (2, 9, 8, 3), (2, 5, 4, 5)),
        (ConvBNAct(5, 3, padding="valid", dilation_rate=2), (2, 9, 8, 3), (2, 5, 4, 5)),
        (DepthwiseSeparableBlock(7, 3, strides=2), (2, 9, 8, 3), (2, 5, 4, 7)),
        (DepthwiseSeparableBlock(7, 5, padding="valid", se_ratio=0.5), (2, 9, 8, 3), (2, 5, 4, 7)),
    ]
    for layer, input_shape, expected in cases:
        assert tuple(layer.compute_output_shape(input_shape)) == expected
        assert tuple(layer(np.zeros(input_shape, "float32")).shape) == expected


def test_bad_arguments_raise():
    cases = [
        (ConvBNAct, {"filters": 0}, "filters"),
        (ConvBNAct, {"filters": 8, "order": "bn_first"}, "order"),
        (ConvBNAct, {"filters": 8, "dropout": 1.0}, "dropout"),
        (ConvBNAct, {"filters": 8, "dropout": -0.1}, "dropout"),
        (ConvBNAct, {"filters": 8, "padding": "causal"}, "padding"),
        (ConvBNAct, {"filters": 8, "kernel_size": 0}, "kernel_size"),
        (ConvBNAct, {"filters": 8, "strides": 2, "dilation_rate": 2}, "dilation_rate"),
        (ConvBNAct, {"filters": 8, "groups": 3}, "groups"),
        (ConvBNAct, {"filters": 8, "bn_momentum": 1.5}, "bn_momentum"),
        (ConvBNAct, {"filters": 8, "activation": "no_such_activation"}, "activation"),
        (DepthwiseSeparableBlock, {"filters": 0}, "filters"),
        (DepthwiseSeparableBlock, {"filters": 8, "se_ratio": 0.0}, "se_ratio"),
        (DepthwiseSeparableBlock, {"filters": 8, "se_gate": "relu"}, "se_gate"),
        (DepthwiseSeparableBlock, {"filters": 8, "order": "bn"}, "order"),
        (DepthwiseSeparableBlock, {"filters": 8, "dropout": 1.0}, "dropout"),
        (DepthwiseSeparableBlock, {"filters": 8, "strides": 0}, "strides"),
    ]
    for cls, kwargs, argument in cases:
        with pytest.raises(ValueError, match=argument):
            cls(**kwargs)
    for layer in (ConvBNAct(4), DepthwiseSeparableBlock(4)):
        with pytest.raises(ValueError, match=r"\(batch, H, W, C\)"):
            layer(np.zeros((2, 8, 8), "float32"))
    with pytest.raises(ValueError, match="groups"):
        ConvBNAct(4, groups=2)(np.zeros((1, 5, 5, 3), "float32"))

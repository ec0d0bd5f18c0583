"""MAC and parameter counts against hand counts and the paper.

``models.count_macs`` is what the zoo table and the results publish. Each layer
type is checked here on a tiny model whose count is written out by hand:
``MACs = output elements x multiply-accumulates per output element``, with
BatchNorm folded into the convolutions and activations, pooling, additions and
element-wise gates not counted (the convention the zoo docs state).
Parameter counts are checked against the paper where the paper gives them.
"""

from __future__ import annotations

import keras
import pytest

from keras_effcnn import layers as effcnn_layers
from keras_effcnn import models


def _macs(input_shape, *layer_list) -> int:
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in layer_list:
        x = layer(x)
    return models.count_macs(keras.Model(inputs, x))


# (input shape, layers, hand count). Output H x W x C, then the MACs of one output element.
CASES = {
    # 9x9x3 -> 3x3 valid, stride 2 -> 4x4x4; each output: 3*3 taps x 3 input channels.
    "conv2d_strided": ((9, 9, 3), [keras.layers.Conv2D(4, 3, strides=2, use_bias=True)], 4 * 4 * 4 * (3 * 3 * 3)),
    # dilation 2 widens the 3x3 kernel to 5x5 without adding taps: 10 - 4 = 6 -> 6x6x3, 9 taps x 2 channels.
    "conv2d_dilated": ((10, 10, 2), [keras.layers.Conv2D(3, 3, dilation_rate=2)], 6 * 6 * 3 * (3 * 3 * 2)),
    # groups=2: each output sees 4 / 2 = 2 input channels; same padding keeps 8x8.
    "conv2d_grouped": ((8, 8, 4), [keras.layers.Conv2D(6, 3, padding="same", groups=2)], 8 * 8 * 6 * (3 * 3 * 2)),
    # depthwise, stride 2, depth multiplier 2: 8x8x3 -> 4x4x6, each output: 3*3 taps of one channel.
    "depthwise": ((8, 8, 3), [keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)],
                  4 * 4 * 6 * (3 * 3)),
    # separable = depthwise 6x6x4 (9 each) + pointwise 6x6x5 (4 each).
    "separable": ((6, 6, 4), [keras.layers.SeparableConv2D(5, 3, padding="same")], 6 * 6 * 4 * 9 + 6 * 6 * 5 * 4),
    # dense: 12 inputs x 7 outputs (the bias is an addition, not a MAC).
    "dense": ((12,), [keras.layers.Dense(7)], 12 * 7),
    # 1x1 conv to flatten the spatial axes away first: 3x3x2 -> 3x3x4 (2 each), then dense 36 -> 5.
    "conv_then_dense": ((3, 3, 2), [keras.layers.Conv2D(4, 1), keras.layers.Flatten(), keras.layers.Dense(5)],
                        3 * 3 * 4 * 2 + 36 * 5),
    # BlurPool: a fixed f x f depthwise blur evaluated at stride 2 only: 8x8x4 -> 4x4x4, f*f each.
    "blurpool_3": ((8, 8, 4), [effcnn_layers.BlurPool2D(filter_size=3)], 4 * 4 * 4 * (3 * 3)),
    "blurpool_5": ((8, 8, 4), [effcnn_layers.BlurPool2D(filter_size=5)], 4 * 4 * 4 * (5 * 5)),
    # squeeze-excite on 6x6x8 with 2 latent channels: mean (not counted), 1x1 8->2, 1x1 2->8, gate (not counted).
    "squeeze_excite": ((6, 6, 8), [effcnn_layers.SqueezeExcite(latent_channels=2)], 8 * 2 + 2 * 8),
    # ConvBNAct, grouped and strided: 8x8x4 -> 4x4x6, 3*3 taps x 2 channels per group; BN folds away.
    "conv_bn_act": ((8, 8, 4), [effcnn_layers.ConvBNAct(6, 3, strides=2, groups=2)], 4 * 4 * 6 * (3 * 3 * 2)),
    # depthwise-separable block with SE (ratio 0.25 of 8 = 2 latent) and a dilated 3x3:
    # depthwise 8x8x8 (9 each) + SE (8*2 + 2*8) + pointwise 8x8x6 (8 each).
    "depthwise_separable_block": (
        (8, 8, 8), [effcnn_layers.DepthwiseSeparableBlock(6, 3, dilation_rate=2, se_ratio=0.25)],
        8 * 8 * 8 * 9 + (8 * 2 + 2 * 8) + 8 * 8 * 6 * 8),
    # strided block: 8x8x4 -> 4x4x4 depthwise + 4x4x6 pointwise.
    "depthwise_separable_block_strided": (
        (8, 8, 4), [effcnn_layers.DepthwiseSeparableBlock(6, 3, strides=2)], 4 * 4 * 4 * 9 + 4 * 4 * 6 * 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_count_macs_matches_the_hand_count(case):
    input_shape, layer_list, expected = CASES[case]
    # Fresh layers per call: parametrize shares the objects above, and a Keras layer builds once.
    fresh = [type(layer).from_config(layer.get_config()) for layer in layer_list]
    assert _macs(input_shape, *fresh) == expected


def test_count_macs_is_per_image_and_ignores_pooling_and_normalisation():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Normalization(mean=[0.5, 0.5], variance=[0.25, 0.25])(inputs)
    x = keras.layers.Conv2D(3, 3, padding="same")(x)  # 8x8x3, 18 each
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4)(x)  # 3 x 4
    assert models.count_macs(keras.Model(inputs, outputs)) == 8 * 8 * 3 * 18 + 3 * 4


# ----------------------------------------------------------------------------- the paper's counts


def test_paper_mnist_has_the_papers_parameter_count():
    """The paper (Ethiraj & Bolla 2022) states 1,560 parameters for its MNIST net; the port has exactly that."""
    spec = models.get_spec("paper_mnist")
    assert spec.paper_params == 1_560
    assert models.count_params(models.build("paper_mnist"))["trainable"] == 1_560


def test_paper_cifar10_is_a_reconstruction_378_parameters_short():
    """The paper states 143,396 parameters for its CIFAR-10 net but not every layer width.

    ``paper_cifar10`` is rebuilt from the paper's description (stages 16 -> 32 -> 64,
    a dilated 3x3, DW-separable to 128 / 192 / 260, GAP, 1x1 classifier) and has
    143,018: 378 (0.26 %) fewer. The paper's figure cannot be reproduced without the
    missing widths; this pins the known deviation so a change to the network shows,
    and the zoo table prints both counts side by side (``test_docs`` checks the note).
    """
    spec = models.get_spec("paper_cifar10")
    assert spec.paper_params == 143_396
    count = models.count_params(models.build("paper_cifar10"))["trainable"]
    assert count == 143_018
    assert spec.paper_params - count == 378

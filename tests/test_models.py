"""The zoo: parameter counts as documented, MACs against hand formulas, one signature."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_effcnn import models

# The counts the docs state (trainable parameters, the paper's convention).
DOCUMENTED_PARAMS = {
    "paper_mnist": 1_560,  # equals the paper's PyTorch count
    "paper_cifar10": 143_018,  # the paper reports 143,396
    "effcnn_mnist": 1_494,
    "effcnn_cifar10": 131_198,
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED_PARAMS))
def test_parameter_counts_match_docs(name):
    model = models.build(name)
    counts = models.count_params(model)
    assert counts["trainable"] == DOCUMENTED_PARAMS[name]
    assert counts["total"] == model.count_params()


def test_budgets():
    assert models.count_params(models.build("effcnn_mnist"))["trainable"] <= 1_500
    assert models.count_params(models.build("effcnn_cifar10"))["trainable"] <= 140_000


def test_registry_lists_every_documented_model():
    assert set(DOCUMENTED_PARAMS) <= set(models.list_models())


@pytest.mark.parametrize("name", sorted(DOCUMENTED_PARAMS))
def test_one_signature(name):
    spec = models.get_spec(name)
    channels = 1 if spec.dataset == "mnist" else 3
    model = models.build(name, input_shape=(36, 36, channels), num_classes=7)
    out = model(np.random.default_rng(0).random((2, 36, 36, channels), dtype=np.float32), training=False)
    assert tuple(out.shape) == (2, 7)
    assert np.isfinite(np.asarray(out)).all()


def test_macs_match_hand_formula():
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, padding="valid", use_bias=False)(inputs)  # 8x8x8 out, 3*3*3 per output
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)  # 8x8x8 out, 9 per output
    x = keras.layers.Conv2D(4, 1, strides=2, use_bias=False)(x)  # 4x4x4 out, 8 per output
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)  # 4*5
    model = keras.Model(inputs, outputs)
    expected = 8 * 8 * 8 * 27 + 8 * 8 * 8 * 9 + 4 * 4 * 4 * 8 + 4 * 5
    assert models.count_macs(model) == expected


def test_paper_mnist_phases_change_the_count_as_the_formula_says():
    base = models.count_params(models.build("paper_mnist"))["trainable"]
    full = models.count_params(models.build("paper_mnist", depthwise=False))["trainable"]
    # Each of the four DW+PW units becomes a full 3x3 conv: 9*cin*cout instead of 9*cin + cin*cout.
    units = [(8, 12), (8, 12), (12, 16), (12, 15)]
    assert full - base == sum(9 * a * b - (9 * a + a * b) for a, b in units)
    blur = models.count_params(models.build("paper_mnist", blurpool=True))["trainable"]
    assert blur == base  # BlurPool adds no parameters


def test_effcnn_cifar10_blocks_change_the_count_as_the_formula_says():
    # DepthwiseSeparableBlock(C -> C): 9C + 2C (depthwise + BN) + SE(C) + C*C + 2C (pointwise + BN),
    # SE(C) = 2*C*r + r + C with r = max(1, round(C * se_ratio)); SE only in the 8x8 and 4x4 stages.
    def block(c, se_ratio=None):
        se = 0 if se_ratio is None else 2 * c * max(1, round(c * se_ratio)) + max(1, round(c * se_ratio)) + c
        return 9 * c + 2 * c + se + c * c + 2 * c

    def count(**options):
        return models.count_params(models.build("effcnn_cifar10", **options))["trainable"]

    default = count()
    assert count(blocks=(2, 1, 1)) == default
    assert default - count(blocks=(0, 1, 0)) == 2 * block(64) + block(192, 0.0625)
    assert count(blocks=(2, 3, 1)) - default == 2 * block(128, 0.0625)
    lite = models.build("effcnn_cifar10", widths=(16, 48, 128, 224), blocks=(1, 1, 1))
    names = {layer.name for layer in lite.layers}
    assert {"s2_block1", "s3_dilated", "s4_block"} <= names and "s2_block2" not in names
    # The default layout keeps the layer names that the shipped weights are stored under.
    assert {"s2_block1", "s2_block2", "s3_dilated", "s4_block"} <= {layer.name for layer in models.build("effcnn_cifar10").layers}
    with pytest.raises(ValueError, match="blocks"):
        models.build("effcnn_cifar10", blocks=(1, 0, 1))


def test_effcnn_mnist_half_resolution_keeps_the_parameters_on_a_14x14_image():
    full = models.build("effcnn_mnist")
    half = models.build("effcnn_mnist", half_resolution=True)
    assert models.count_params(half) == models.count_params(full)
    trunk = models.build("effcnn_mnist", half_resolution=True, include_top=False)
    assert tuple(trunk.output_shape) == (None, 3, 3, 16)  # 28 -> 14 -> 12, 10, 8, 6 -> 3
    # Hand count (MACs per image): input blur 14*14*9; stem 12*12*9*8; blocks dw + pw at 10, 8, 6 and 3
    # pixels; the second blur 3*3*14*9; logits 16*10.
    expected = (14 * 14 * 9 + 12 * 12 * 9 * 8 + 10 * 10 * (9 * 8 + 8 * 12) + 8 * 8 * (9 * 12 + 12 * 12)
                + 6 * 6 * (9 * 12 + 12 * 14) + 3 * 3 * 14 * 9 + 3 * 3 * (9 * 14 + 14 * 16) + 16 * 10)
    assert models.count_macs(half) == expected


def test_effcnn_mnist_activation_option_reaches_every_block_and_keeps_the_budget():
    import numpy as np

    default = models.build("effcnn_mnist")
    relu = models.build("effcnn_mnist", activation="relu")
    swish = models.build("effcnn_mnist", activation="hard_swish")
    assert models.count_params(swish) == models.count_params(default)
    assert models.count_macs(swish) == models.count_macs(default)
    hard_swish = keras.activations.serialize(keras.activations.get("hard_swish"))  # Keras 3 names it hard_silu
    for name in ("stem", "b1", "b2", "b3", "b4"):
        assert swish.get_layer(name).get_config()["activation"] == hard_swish, name
    # Same weights: "relu" is the default net exactly; hard_swish computes something else.
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    for model in (relu, swish):
        model.set_weights(default.get_weights())
    np.testing.assert_array_equal(relu.predict(x, verbose=0), default.predict(x, verbose=0))
    assert not np.allclose(swish.predict(x, verbose=0), default.predict(x, verbose=0))
    with pytest.raises(ValueError, match="activation"):
        models.build("effcnn_mnist", activation="no_such_activation")


def test_effcnn_mnist_conv_head_counts_and_computes_the_average_class_score(tmp_path):
    a, b, c, d = widths = (8, 12, 16, 16)
    model = models.build("effcnn_mnist", head="conv", widths=widths)
    # Hand count: stem 3x3 conv + BN; each DW-separable block 9*C_in + 2*C_in + C_in*C_out + 2*C_out;
    # the head's depthwise 9*d + BN 2*d and its 1x1 convolution with biases d*10 + 10; no dense layer.
    blocks = sum(11 * cin + cin * cout + 2 * cout for cin, cout in ((a, b), (b, c), (c, d)))
    assert models.count_params(model)["trainable"] == 11 * a + blocks + 21 * d + 10 <= 1500
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign((0.5 * rng.standard_normal(variable.shape)).astype("float32"))
    x = rng.uniform(0, 1, (4, 28, 28, 1)).astype("float32")
    features = keras.Model(model.inputs, model.get_layer("b4_depthwise_act").output).predict(x, verbose=0)
    scores = model.get_layer("class_scores")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (scores.kernel, scores.bias))
    # A linear 1x1 convolution then GAP is the dense layer on the pooled features (NumPy reference).
    expected = features.mean(axis=(1, 2)) @ kernel[0, 0] + bias
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "m.keras").predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="4 channel counts"):
        models.build("effcnn_mnist", head="conv")  # the default 5 widths belong to the dense head
    with pytest.raises(ValueError, match="head"):
        models.build("effcnn_mnist", head="mlp")


def test_effcnn_mnist_without_bn_scale_computes_the_same_functions():
    # Each gamma folds into the next linear layer: ReLU(g*z + b) = g * ReLU(z + b/g) for g > 0, and
    # BlurMaxPool and GAP commute with a positive per-channel scale.
    with_scale = models.build("effcnn_mnist")
    without = models.build("effcnn_mnist", bn_scale=False)
    n_gamma = 8 + (8 + 12) + (12 + 12) + (12 + 14) + (14 + 16)
    assert models.count_params(without)["trainable"] == models.count_params(with_scale)["trainable"] - n_gamma
    rng = np.random.default_rng(0)
    for variable in with_scale.weights:
        values = rng.uniform(0.5, 2.0, variable.shape) if "gamma" in variable.path else (
            0.5 * rng.standard_normal(variable.shape))
        variable.assign(values.astype("float32"))
    weights = {v.path: keras.ops.convert_to_numpy(v).copy() for v in with_scale.weights}

    def fold(bn, kernel, scale_axis):
        gamma = weights[bn.gamma.path]
        weights[bn.beta.path] = weights[bn.beta.path] / gamma
        shape = [1] * weights[kernel.path].ndim
        shape[scale_axis] = -1
        weights[kernel.path] = weights[kernel.path] * gamma.reshape(shape)

    chain = [with_scale.get_layer("stem").bn]
    for name in ("b1", "b2", "b3", "b4"):
        block = with_scale.get_layer(name)
        fold(chain[-1], block.depthwise.kernel, 2)  # depthwise kernel (3, 3, C, 1): input channels
        fold(block.depthwise_bn, block.pointwise.conv.kernel, 2)  # pointwise (1, 1, C, F)
        chain.append(block.pointwise.bn)
    fold(chain[-1], with_scale.get_layer("logits").kernel, 0)
    by_path = {v.path: v for v in without.weights}
    for path, value in weights.items():
        if path in by_path:
            by_path[path].assign(value)
    x = rng.uniform(0, 1, (16, 28, 28, 1)).astype("float32")
    # Training mode: batch statistics, so the next BatchNorm normalises the scale away exactly
    # (up to its epsilon).
    np.testing.assert_allclose(without(x, training=True), with_scale(x, training=True), rtol=1e-3, atol=1e-3)


def test_unknown_model_and_bad_shapes():
    with pytest.raises(ValueError, match="`model` must be one of"):
        models.build("resnet9000")
    with pytest.raises(ValueError, match="input_shape"):
        models.build("effcnn_mnist", input_shape=(28, 28))
    with pytest.raises(ValueError, match="num_classes"):
        models.build("effcnn_mnist", num_classes=1)

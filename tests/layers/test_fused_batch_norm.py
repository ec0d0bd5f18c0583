"""FusedBatchNormalization against the batch-norm formulas in NumPy (forward, gradients, moving statistics)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_effcnn.layers import ConvBNAct, FusedBatchNormalization

EPSILON = 1e-5


def _numpy_batch_norm(x, gamma, beta, dy):
    """Training-mode BN over (N, H, W) in float64: output, input/gamma/beta gradients, batch mean, biased variance."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    inv = 1.0 / np.sqrt(var + EPSILON)
    xhat = (x - mean) * inv
    y = gamma * xhat + beta
    dxhat = dy * gamma
    dx = inv * (dxhat - dxhat.mean(axis=(0, 1, 2)) - xhat * (dxhat * xhat).mean(axis=(0, 1, 2)))
    return y, dx, (dy * xhat).sum(axis=(0, 1, 2)), dy.sum(axis=(0, 1, 2)), mean, var


def _layer(channels: int, rng) -> FusedBatchNormalization:
    layer = FusedBatchNormalization(momentum=0.9, epsilon=EPSILON)
    layer.build((None, 5, 6, channels))
    layer.gamma.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    layer.beta.assign(rng.standard_normal(channels).astype("float32"))
    layer.moving_mean.assign(rng.standard_normal(channels).astype("float32"))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    return layer


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="gradients taken with tf.GradientTape")
@pytest.mark.parametrize("channels", [3, 4, 14, 16])  # Keras' ops (3, 14) and the fused kernel (4, 16)
def test_training_step_matches_numpy_formulas(channels):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = (3.0 * rng.standard_normal((4, 5, 6, channels)) + 2.0).astype("float32")
    dy = rng.standard_normal(x.shape).astype("float32")
    layer = _layer(channels, rng)
    gamma, beta = np.asarray(layer.gamma), np.asarray(layer.beta)
    moving_mean, moving_var = np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(y * dy)
    dx, dgamma, dbeta = tape.gradient(loss, [xt, layer.gamma, layer.beta])

    want_y, want_dx, want_dgamma, want_dbeta, mean, var = _numpy_batch_norm(x, gamma, beta, dy)
    np.testing.assert_allclose(y, want_y, atol=2e-5)
    np.testing.assert_allclose(dx, want_dx, atol=2e-5)
    np.testing.assert_allclose(dgamma, want_dgamma, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta, want_dbeta, rtol=1e-4, atol=1e-4)
    # Keras' update: biased batch variance, moving = 0.9 * moving + 0.1 * batch.
    np.testing.assert_allclose(layer.moving_mean, 0.9 * moving_mean + 0.1 * mean, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, 0.9 * moving_var + 0.1 * var, atol=1e-5)


def test_inference_uses_moving_statistics():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 6, 4)).astype("float32")
    layer = _layer(4, rng)
    gamma, beta, mean, var = (np.asarray(w) for w in layer.weights)
    want = gamma * (x - mean) / np.sqrt(var + EPSILON) + beta
    np.testing.assert_allclose(layer(x, training=False), want, atol=1e-5)
    # A frozen layer normalises with the moving statistics even in training, as Keras' does.
    layer.trainable = False
    np.testing.assert_allclose(layer(x, training=True), want, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean, mean)


def test_single_pixel_batch_has_zero_variance_update():
    rng = np.random.default_rng(2)
    layer = _layer(4, rng)  # 4 channels: the fused kernel, whose Bessel-corrected variance is undone here
    moving_var = np.asarray(layer.moving_variance)
    y = layer(np.full((1, 1, 1, 4), 3.0, "float32"), training=True)
    np.testing.assert_allclose(y, np.broadcast_to(np.asarray(layer.beta), (1, 1, 1, 4)), atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, 0.9 * moving_var, atol=1e-6)


def _training_op_types(layer, input_shape) -> set[str]:
    """The op types of ``layer``'s training-mode TensorFlow graph for a float32 input."""
    import tensorflow as tf

    graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(
        tf.TensorSpec(input_shape, tf.float32)
    ).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="inspects the TensorFlow graph")
def test_blocks_train_with_the_fused_kernel():
    block = ConvBNAct(4, 3)
    block.build((None, 6, 6, 2))
    assert isinstance(block.bn, FusedBatchNormalization)
    assert "FusedBatchNormV3" in _training_op_types(block, (2, 6, 6, 2))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="inspects the TensorFlow graph")
def test_fused_kernel_only_at_channel_counts_where_it_pays():
    import tensorflow as tf

    from keras_effcnn.layers.fused_batch_norm import fused_kernel_pays

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("on a GPU the fused kernel is used at every channel count")
    for channels in (3, 4, 10, 12, 14, 16):
        layer = FusedBatchNormalization()
        layer.build((None, 6, 6, channels))
        fused = "FusedBatchNormV3" in _training_op_types(layer, (2, 6, 6, channels))
        assert fused == (channels % 4 == 0) == fused_kernel_pays(channels), channels

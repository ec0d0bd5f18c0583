"""SqueezeExcite against a NumPy reference built from the layer's own weights."""

from __future__ import annotations

import numpy as np
import pytest

from keras_effcnn.layers import SqueezeExcite, latent_channels_for

pytestmark = pytest.mark.backend_neutral  # also run with KERAS_BACKEND=jax in CI


def numpy_squeeze_excite(x: np.ndarray, layer: SqueezeExcite) -> np.ndarray:
    """GAP -> dense -> ReLU -> dense -> gate -> rescale, in float64."""
    reduce_w = layer.reduce.kernel.numpy()[0, 0].astype(np.float64)  # (C, r)
    expand_w = layer.expand.kernel.numpy()[0, 0].astype(np.float64)  # (r, C)
    pooled = x.astype(np.float64).mean(axis=(1, 2))  # (B, C)
    hidden = pooled @ reduce_w
    if layer.use_bias:
        hidden += layer.reduce.bias.numpy()
    hidden = np.maximum(hidden, 0.0)
    logits = hidden @ expand_w
    if layer.use_bias:
        logits += layer.expand.bias.numpy()
    if layer.gate == "sigmoid":
        gate = 1.0 / (1.0 + np.exp(-logits))
    else:
        gate = np.clip(logits + 3.0, 0.0, 6.0) / 6.0
    return x * gate[:, None, None, :], logits


def _randomize(layer: SqueezeExcite, rng, scale: float) -> None:
    for variable in layer.weights:
        variable.assign(scale * rng.standard_normal(variable.shape).astype("float32"))


@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_output_is_input_times_gate(gate, use_bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 6, 12)).astype("float32") + 0.5
    layer = SqueezeExcite(ratio=0.25, gate=gate, use_bias=use_bias)
    layer.build(x.shape)
    # Large enough weights that hard_sigmoid's clipped regions (|logit| > 3) are exercised.
    _randomize(layer, rng, scale=2.0)
    expected, logits = numpy_squeeze_excite(x, layer)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5, atol=1e-5)
    if gate == "hard_sigmoid":
        assert (logits > 3).any() and (logits < -3).any() and (np.abs(logits) < 3).any()


def test_hard_sigmoid_differs_from_sigmoid():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 4, 8)).astype("float32")
    soft, hard = SqueezeExcite(gate="sigmoid"), SqueezeExcite(gate="hard_sigmoid")
    soft.build(x.shape)
    hard.build(x.shape)
    _randomize(soft, rng, scale=1.0)
    hard.set_weights(soft.get_weights())
    assert np.abs(np.asarray(soft(x)) - np.asarray(hard(x))).max() > 1e-3


def test_parameter_count_formula():
    cases = [
        (16, {"ratio": 0.25}, 4),
        (10, {"ratio": 0.25}, 3),  # 2.5 rounds half up
        (3, {"ratio": 0.25}, 1),  # 0.75 -> 1
        (8, {"ratio": 0.0625, "min_channels": 4}, 4),  # 0.5 -> 1, floored at 4
        (7, {"latent_channels": 5}, 5),
        (32, {"ratio": 1.0}, 32),
    ]
    for channels, kwargs, latent in cases:
        for use_bias in (True, False):
            layer = SqueezeExcite(use_bias=use_bias, **kwargs)
            layer.build((None, 6, 6, channels))
            # C*r + r (bias) + r*C + C (bias)
            expected = channels * latent + latent * channels + use_bias * (latent + channels)
            assert layer.count_params() == expected, (channels, kwargs, use_bias)
            assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == expected
            assert layer.non_trainable_weights == []
            assert layer.reduce.filters == latent


def test_latent_channels_for():
    assert latent_channels_for(64, 0.25) == 16
    assert latent_channels_for(10, 0.25) == 3
    assert latent_channels_for(5, 0.1, min_channels=2) == 2


def test_output_shape_and_dynamic_spatial_size():
    layer = SqueezeExcite()
    assert layer.compute_output_shape((None, None, None, 8)) == (None, None, None, 8)
    assert layer(np.ones((2, 3, 5, 8), "float32")).shape == (2, 3, 5, 8)


def test_bad_arguments_raise():
    cases = [
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"latent_channels": 0}, "latent_channels"),
        ({"min_channels": 0}, "min_channels"),
        ({"gate": "tanh"}, "gate"),
        ({"activation": "no_such_activation"}, "activation"),
    ]
    for kwargs, argument in cases:
        with pytest.raises(ValueError, match=argument):
            SqueezeExcite(**kwargs)


def test_rank_other_than_4_raises():
    with pytest.raises(ValueError, match=r"\(batch, H, W, C\)"):
        SqueezeExcite()(np.ones((2, 8), "float32"))

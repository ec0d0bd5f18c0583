"""SAMModel against a hand-written reference of the SAM / ASAM update (NumPy, with
gradients from raw TF ops), on the active Keras backend (TensorFlow or JAX)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_effcnn.sam import SAMModel
from keras_effcnn.schedules import OneCycle

BN_MOMENTUM, BN_EPS = 0.9, 1e-3
# Which of the weights below are ASAM "weights" (T = |w| + eta) rather than biases or
# BatchNorm offsets (T = 1): conv kernel, conv bias, gamma, beta, dense kernel, dense bias.
ADAPTIVE_MASK = (True, False, True, False, True, False)

pytestmark = pytest.mark.backend_neutral


def _build(cls=SAMModel, **kwargs):
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3)(inputs)
    h = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(4)(h)
    return cls(inputs=inputs, outputs=outputs, **kwargs)


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 2)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, n)]
    return x, y


def _forward(weights, x):
    """The model above in raw TF ops (BatchNorm in training mode, biased variance)."""
    kernel, bias, gamma, beta, dense_w, dense_b = weights
    h = tf.nn.conv2d(x, kernel, strides=1, padding="VALID") + bias
    mean, var = tf.nn.moments(h, axes=[0, 1, 2])
    h = gamma * (h - mean) / tf.sqrt(var + BN_EPS) + beta
    h = tf.reduce_mean(tf.nn.relu(h), axis=[1, 2])
    return h @ dense_w + dense_b, mean, var


def _loss(weights, x, y, sw=None):
    logits, _, _ = _forward(weights, x)
    per_sample = tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=logits)
    if sw is not None:
        per_sample = per_sample * sw
    return tf.reduce_mean(per_sample)


def _grad(weights, x, y, sw=None):
    ws = [tf.constant(w) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch(ws)
        loss = _loss(ws, x, y, sw)
    return [g.numpy().astype("float64") for g in tape.gradient(loss, ws)], float(loss)


def _reference_step(weights, x, y, lr, rho, adaptive=False, splits=1, sw=None, eta=0.01):
    """SGD (no momentum) at w with the gradient taken at w + eps, per batch part.

    ASAM as in Kwon et al.'s `ascent_step`: T = |w| + eta for weights, 1 for biases.
    """
    w = [np.asarray(v, "float64") for v in weights]
    n = len(x)
    bounds = np.cumsum([0] + [n // splits + (i < n % splits) for i in range(splits)])
    total = [np.zeros_like(v) for v in w]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part_sw = None if sw is None else sw[lo:hi]
        g, _ = _grad([v.astype("float32") for v in w], x[lo:hi], y[lo:hi], part_sw)
        if adaptive:
            t = [np.abs(v) + eta if is_weight else np.ones_like(v) for v, is_weight in zip(w, ADAPTIVE_MASK)]
            norm = np.sqrt(sum(np.sum((ti * gi) ** 2) for ti, gi in zip(t, g)))
            eps = [rho * ti**2 * gi / norm for ti, gi in zip(t, g)]
        else:
            norm = np.sqrt(sum(np.sum(gi**2) for gi in g))
            eps = [rho * gi / norm for gi in g]
        g_sharp, _ = _grad([(v + e).astype("float32") for v, e in zip(w, eps)], x[lo:hi], y[lo:hi], part_sw)
        total = [t + (hi - lo) / n * gs for t, gs in zip(total, g_sharp)]
    return [v - lr * t for v, t in zip(w, total)]


def _compile(model, optimizer=None, **kwargs):
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["categorical_accuracy"],
        jit_compile=False,
        **kwargs,
    )
    return model


@pytest.mark.parametrize(
    "adaptive,splits,rho,use_sw,schedule",
    [
        (False, 1, 0.05, False, False),
        (False, 1, 0.2, True, True),
        (True, 1, 0.5, False, False),
        (False, 3, 0.1, False, False),
        (True, 2, 0.5, True, False),
    ],
)
def test_one_step_matches_reference(adaptive, splits, rho, use_sw, schedule):
    x, y = _data(n=8)
    sw = np.linspace(0.5, 1.5, len(x)).astype("float32") if use_sw else None
    lr = OneCycle(0.5, 100) if schedule else 0.1
    model = _compile(_build(rho=rho, adaptive=adaptive, num_splits=splits), keras.optimizers.SGD(learning_rate=lr))
    w0 = [v.numpy() for v in model.trainable_variables]
    logs = model.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    want = _reference_step(w0, x, y, lr=0.5 / 25 if schedule else 0.1, rho=rho, adaptive=adaptive, splits=splits, sw=sw)
    for got, ref in zip(model.trainable_variables, want):
        np.testing.assert_allclose(got.numpy(), ref, rtol=2e-4, atol=2e-6)
    # The reported loss and metric are those of the unperturbed pass at w.
    bounds = np.cumsum([0] + [len(x) // splits + (i < len(x) % splits) for i in range(splits)])
    ref_loss = sum(
        (hi - lo) / len(x) * _grad(w0, x[lo:hi], y[lo:hi], None if sw is None else sw[lo:hi])[1]
        for lo, hi in zip(bounds[:-1], bounds[1:])
    )
    assert logs["loss"] == pytest.approx(ref_loss, rel=1e-5)
    preds = np.concatenate([_forward(w0, x[lo:hi])[0].numpy() for lo, hi in zip(bounds[:-1], bounds[1:])])
    acc = np.mean(preds.argmax(1) == y.argmax(1))  # compiled `metrics` are unweighted in Keras
    assert logs["categorical_accuracy"] == pytest.approx(acc)
    # BatchNorm moving statistics: one momentum update per part from its first pass
    # at w; the pass at w + eps leaves no trace.
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    mean, var = np.zeros(3), np.ones(3)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        _, m, v = _forward(w0, x[lo:hi])
        mean = BN_MOMENTUM * mean + (1 - BN_MOMENTUM) * m.numpy()
        var = BN_MOMENTUM * var + (1 - BN_MOMENTUM) * v.numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-5, atol=1e-6)


def test_rho_zero_equals_plain_training_with_momentum_optimizer():
    x, y = _data(n=16, seed=5)
    plain = _compile(_build(keras.Model), keras.optimizers.SGD(0.05, momentum=0.9))
    sam = _compile(_build(rho=0.0), keras.optimizers.SGD(0.05, momentum=0.9))
    sam.set_weights(plain.get_weights())
    for _ in range(3):
        plain.train_on_batch(x, y)
        sam.train_on_batch(x, y)
    for a, b in zip(plain.weights, sam.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_adam_with_schedule_takes_a_sign_step_along_the_sharp_gradient():
    x, y = _data(n=32, seed=1)
    model = _compile(_build(rho=0.05), keras.optimizers.Adam(OneCycle(1e-2, 50)))
    w0 = [v.numpy() for v in model.trainable_variables]
    model.train_on_batch(x[:8], y[:8])
    # With lr=1 the reference step is w - g', so it yields the sharp gradient g'.
    g_sharp = [w - r for w, r in zip(w0, _reference_step(w0, x[:8], y[:8], lr=1.0, rho=0.05))]
    # Adam's first update is lr(0) * g' / |g'| = OneCycle's 1e-2 / 25 against the sign of g'.
    for v, w, g in zip(model.trainable_variables, w0, g_sharp):
        big = np.abs(g) > 1e-4
        np.testing.assert_allclose((w - v.numpy())[big], 4e-4 * np.sign(g[big]), rtol=1e-2)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert model.optimizer.iterations.numpy() == 9
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_config_and_keras_roundtrip(tmp_path):
    x, y = _data(n=8)
    model = _compile(_build(rho=0.3, adaptive=True, num_splits=2, eps=1e-9, eta=0.02))
    model.train_on_batch(x, y)
    config = model.get_config()
    assert (config["rho"], config["adaptive"], config["num_splits"], config["eps"], config["eta"]) == (
        0.3, True, 2, 1e-9, 0.02)
    path = tmp_path / "sam.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is SAMModel
    assert (loaded.rho, loaded.adaptive, loaded.num_splits, loaded.eps, loaded.eta) == (0.3, True, 2, 1e-9, 0.02)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    # The restored model trains exactly like the original.
    w = [v.numpy() for v in loaded.trainable_variables]
    loaded.train_on_batch(x, y)
    want = _reference_step(w, x, y, lr=0.1, rho=0.3, adaptive=True, splits=2, eta=0.02)
    for got, ref in zip(loaded.trainable_variables, want):
        np.testing.assert_allclose(got.numpy(), ref, rtol=2e-4, atol=2e-6)


def test_from_model_shares_layers_and_trains_them():
    base = _build(keras.Model)
    sam = _compile(SAMModel.from_model(base, rho=0.05))
    assert sam.rho == 0.05 and sam.name == base.name
    assert all(a is b for a, b in zip(sam.trainable_variables, base.trainable_variables))
    x, y = _data(n=8)
    w0 = [v.numpy() for v in base.trainable_variables]
    sam.train_on_batch(x, y)
    want = _reference_step(w0, x, y, lr=0.1, rho=0.05)
    for got, ref in zip(base.trainable_variables, want):
        np.testing.assert_allclose(got.numpy(), ref, rtol=2e-4, atol=2e-6)
    seq = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert SAMModel.from_model(seq).layers[-1] is seq.layers[-1]


@pytest.mark.parametrize(
    "kwargs,name",
    [(dict(rho=-0.1), "rho"), (dict(num_splits=0), "num_splits"), (dict(eps=0.0), "eps"), (dict(eta=-1.0), "eta")],
)
def test_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _build(**kwargs)


def test_asam_perturbs_zero_biases_and_follows_eta():
    # Zero-initialised biases have T = 1, so ASAM moves them (with T = |w| they never moved);
    # eta = 0 changes the step, so the argument is used.
    x, y = _data(n=8, seed=3)
    steps = {}
    for eta in (0.01, 0.0):
        model = _compile(_build(rho=0.5, adaptive=True, eta=eta))
        w0 = [v.numpy() for v in model.trainable_variables]
        model.train_on_batch(x, y)
        want = _reference_step(w0, x, y, lr=0.1, rho=0.5, adaptive=True, eta=eta)
        for got, ref in zip(model.trainable_variables, want):
            np.testing.assert_allclose(got.numpy(), ref, rtol=2e-4, atol=2e-6)
        steps[eta] = [v.numpy() - w for v, w in zip(model.trainable_variables, w0)]
    assert max(np.max(np.abs(a - b)) for a, b in zip(steps[0.01], steps[0.0])) > 1e-6


def test_compiled_step_matches_reference():
    # jit_compile=True: XLA on TensorFlow, jax.jit of the stateless step on JAX.
    x, y = _data(n=8, seed=4)
    model = _build(rho=0.5, adaptive=True, num_splits=2)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=True)
    w0 = [v.numpy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    want = _reference_step(w0, x, y, lr=0.1, rho=0.5, adaptive=True, splits=2)
    for got, ref in zip(model.trainable_variables, want):
        np.testing.assert_allclose(got.numpy(), ref, rtol=2e-4, atol=2e-6)


def test_other_backends_get_a_clear_error(monkeypatch):
    model = _compile(_build())
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(NotImplementedError, match="TensorFlow and JAX backends"):
        model.train_step(_data(n=4))

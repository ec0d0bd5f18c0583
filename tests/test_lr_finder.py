"""LR range test: the sweep, the per-batch losses, restoration, and the suggestions."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_effcnn.callbacks import LRFinder, find_lr
from keras_effcnn.callbacks.lr_finder import analyze
from keras_effcnn.schedules import OneCycle


@pytest.fixture(scope="module")
def mnist(data_dir):
    with np.load(data_dir / "mnist.npz") as data:
        x = data["x_train"][:256, ::2, ::2, None].astype("float32") / 255.0
        y = np.eye(10, dtype="float32")[data["y_train"][:256]]
    return x, y


def _model(optimizer=None):
    inputs = keras.Input((14, 14, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return model


class _RecordLR(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.lrs = []

    def on_train_batch_end(self, batch, logs=None):
        self.lrs.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def test_sweep_rates_and_per_batch_losses(mnist):
    x, y = mnist
    model = _model()
    # Rates too small to move the weights: every recorded loss must equal that batch's
    # loss at the initial weights, although Keras only reports running means.
    finder = LRFinder(min_lr=1e-12, max_lr=1e-10, num_steps=8)
    recorder = _RecordLR()
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[finder, recorder])
    want_lrs = 1e-12 * (100.0 ** (np.arange(8) / 7))
    np.testing.assert_allclose(recorder.lrs, want_lrs, rtol=1e-5)
    np.testing.assert_allclose(finder.result.lrs, want_lrs, rtol=1e-12)
    # BatchNorm runs in training mode during fit, so the reference does too.
    want = [
        float(model.compute_loss(y=y[i : i + 32], y_pred=model(x[i : i + 32], training=True)))
        for i in range(0, 256, 32)
    ]
    np.testing.assert_allclose(finder.result.losses, want, rtol=1e-4)


def test_find_lr_restores_model_and_optimizer_and_plots(mnist, tmp_path):
    x, y = mnist
    model = _model()
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # non-trivial optimizer state
    before = [w.copy() for w in model.get_weights()]
    opt_before = [np.array(v.numpy()) for v in model.optimizer.variables]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    result = find_lr(model, ds, min_lr=1e-4, max_lr=50.0, num_steps=30, plot_path=tmp_path / "lr.png")
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, v in zip(opt_before, model.optimizer.variables):
        np.testing.assert_array_equal(a, v.numpy())
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
    assert 2 <= len(result.lrs) <= 30
    assert 1e-4 <= result.steepest_lr <= 50 and 1e-4 <= result.min_loss_lr <= 50
    assert result.suggested_bounds == pytest.approx((result.min_loss_lr / 40, result.min_loss_lr / 10))
    png = (tmp_path / "lr.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_divergence_stops_the_sweep_early():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=False)
    result = find_lr(model, (x, y), min_lr=1e-3, max_lr=1e4, num_steps=60, batch_size=16)
    # Plain SGD on this quadratic (Hessian ~ 2 I) diverges beyond lr ~ 1.
    assert len(result.lrs) < 60 and result.lrs[-1] > 1.0
    assert not np.isfinite(result.losses[-1]) or result.losses[-1] > 4 * result.losses.min()
    assert result.suggested_bounds[1] < 1.0


def test_analyze_on_a_known_curve():
    u = np.linspace(-5, 0, 101)  # log10(lr)
    loss = 2 - np.tanh(2 * (u + 3)) + 3 * np.maximum(0, u + 0.95) ** 2
    result = analyze(10**u, loss, smoothing=0.0)
    # Steepest descent where tanh is steepest (u = -3); minimum where the parabola starts.
    assert np.log10(result.steepest_lr) == pytest.approx(-3, abs=0.051)
    assert np.log10(result.min_loss_lr) == pytest.approx(-0.95, abs=0.051)
    assert result.suggested_bounds == pytest.approx((10**-0.95 / 40, 10**-0.95 / 10), rel=0.13)
    np.testing.assert_array_equal(result.smoothed_losses, loss)
    # EMA smoothing with bias correction: the first value is the first loss.
    smoothed = analyze(10**u, loss, smoothing=0.9).smoothed_losses
    assert smoothed[0] == pytest.approx(loss[0])
    assert smoothed[1] == pytest.approx((0.9 * 0.1 * loss[0] + 0.1 * loss[1]) / (1 - 0.81))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(min_lr=0.0), "min_lr"),
        (dict(min_lr=1.0, max_lr=0.5), "max_lr"),
        (dict(num_steps=1), "num_steps"),
        (dict(smoothing=1.0), "smoothing"),
        (dict(divergence_factor=1.0), "divergence_factor"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LRFinder(**kwargs)


def test_schedule_optimizer_is_rejected():
    model = _model(keras.optimizers.SGD(OneCycle(0.1, 10)))
    with pytest.raises(ValueError, match="float `learning_rate`"):
        find_lr(model, (np.zeros((8, 14, 14, 1), "float32"), np.zeros((8, 10), "float32")), num_steps=4)


def test_config_roundtrip():
    finder = LRFinder(1e-6, 3.0, num_steps=50, smoothing=0.9, divergence_factor=5.0, restore=False)
    assert LRFinder.from_config(finder.get_config()).get_config() == finder.get_config()

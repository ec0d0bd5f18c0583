"""SWA: the installed weights are the mean of the snapshots, BatchNorm statistics
are recomputed exactly, and BackupAndRestore resumes give the same average."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_effcnn.callbacks import SWA, update_bn


@pytest.fixture(scope="module")
def mnist(data_dir):
    with np.load(data_dir / "mnist.npz") as data:
        x = data["x_train"][:192, ::2, ::2, None].astype("float32") / 255.0  # 14x14 keeps it quick
        y = np.eye(10, dtype="float32")[data["y_train"][:192]]
    return x, y


def _model(batchnorm=True, lr=0.1):
    inputs = keras.Input((14, 14, 1))
    h = inputs
    for filters in (4, 6):
        h = keras.layers.Conv2D(filters, 3)(h)
        if batchnorm:
            h = keras.layers.BatchNormalization(momentum=0.8)(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=0.9),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return model


class _Recorder(keras.callbacks.Callback):
    """Weights at every epoch end and the learning rate of every batch."""

    def on_train_begin(self, logs=None):
        self.snapshots, self.lrs = {}, []

    def on_train_batch_end(self, batch, logs=None):
        self.lrs.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_epoch_end(self, epoch, logs=None):
        self.snapshots[epoch] = [v.numpy().astype("float64") for v in self.model.trainable_variables]


def _bn_batches(x, batch=64):
    return tf.data.Dataset.from_tensor_slices(x).batch(batch, drop_remainder=True)


def test_average_and_batchnorm_statistics(mnist):
    x, y = mnist
    model = _model()
    recorder = _Recorder()
    swa = SWA(start_epoch=2, swa_lr=0.02, bn_data=_bn_batches(x), verbose=0)
    model.fit(x, y, batch_size=32, epochs=5, shuffle=False, verbose=0, callbacks=[swa, recorder])
    assert swa.num_snapshots == 3
    for i, var in enumerate(model.trainable_variables):
        mean = np.mean([recorder.snapshots[e][i] for e in (2, 3, 4)], axis=0)
        np.testing.assert_allclose(var.numpy(), mean, rtol=1e-6, atol=1e-7)
    steps = len(x) // 32
    np.testing.assert_allclose(recorder.lrs[: 2 * steps], 0.1, rtol=1e-6)
    np.testing.assert_allclose(recorder.lrs[2 * steps :], 0.02, rtol=1e-6)

    # Moving statistics = mean and biased variance of each BN input pooled over all the
    # bn_data batches, under the averaged weights (upstream BN in training mode).
    _assert_pooled_statistics(model, _bn_batches(x))


def _assert_pooled_statistics(model, batches):
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    # Read before probing: the probe runs upstream BN in training mode, which moves their statistics.
    got = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
    probe = keras.Model(model.input, [bn.input for bn in bns])
    inputs = [[] for _ in bns]
    for batch in batches:
        for acc, h in zip(inputs, probe(batch, training=True)):
            acc.append(np.asarray(h).astype("float64").reshape(-1, h.shape[-1]))
    for (mean, var), acc in zip(got, inputs):
        h = np.concatenate(acc)
        # 1e-4: the per-batch moments are Keras's float32 reductions over ~10^4 values; the
        # equal-weight estimator this replaces is off by > 1e-2 on the ragged case below.
        np.testing.assert_allclose(mean, h.mean(axis=0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(var, h.var(axis=0), rtol=1e-4, atol=1e-6)


@pytest.mark.backend_neutral
def test_update_bn_pools_ragged_batches_exactly(mnist):
    """192 samples in batches of 80, 80, 32: the last batch weighs 32/192 and the
    variance includes the spread of the batch means (the per-batch average of
    means and variances misses both)."""
    x, _ = mnist
    model = _model()
    model(x[:2])
    # Shift the second half so the batch means differ: the between-batch spread matters.
    x = x + np.where(np.arange(len(x)) < 96, 0.0, 1.5).astype("float32")[:, None, None, None]
    batches = tf.data.Dataset.from_tensor_slices(x).batch(80)
    assert update_bn(model, batches) == 3
    _assert_pooled_statistics(model, batches)
    # The first BN sees conv(x) directly, so its reference needs no probe: pooled statistics
    # of the whole set in one go, independent of how it was batched.
    first = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)][0]
    update_bn(model, batches)  # undo the probe's moves
    h = np.asarray(keras.Model(model.input, first.input)(x)).astype("float64").reshape(-1, 4)
    np.testing.assert_allclose(first.moving_variance.numpy(), h.var(axis=0), rtol=1e-4, atol=1e-6)
    equal_weights = np.mean([h[:80 * 144].var(axis=0), h[80 * 144:160 * 144].var(axis=0), h[160 * 144:].var(axis=0)], 0)
    assert np.max(np.abs(equal_weights / h.var(axis=0) - 1)) > 1e-2  # the old estimator would fail


def test_update_bn_rejects_batches_of_different_sizes():
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3)(inputs)))
    batches = [np.zeros((2, 8, 8, 1), "float32"), np.zeros((2, 10, 10, 1), "float32")]
    with pytest.raises(ValueError, match="one input size"):
        update_bn(model, batches)


@pytest.mark.backend_neutral
def test_update_bn_leaves_momentum_and_accepts_labelled_batches(mnist):
    x, y = mnist
    model = _model()
    model(x[:2])
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)][0]
    used = update_bn(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(96), steps=1)
    assert used == 1 and bn.momentum == 0.8
    h = np.asarray(keras.Model(model.input, bn.input)(x[:96])).reshape(-1, 4)
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), h.var(axis=0), rtol=1e-4, atol=1e-6)


def test_cyclic_schedule_and_cycle_end_snapshots(mnist):
    x, y = mnist
    x, y = x[:64], y[:64]
    model = _model(batchnorm=False, lr=0.08)
    recorder = _Recorder()
    swa = SWA(start_epoch=1, swa_lr=0.01, swa_schedule="cyclic", cycle_length=2, verbose=0)
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0, callbacks=[swa, recorder])
    steps, cycle = 4, 8
    t = (np.arange(4 * steps) % cycle + 1) / cycle
    np.testing.assert_allclose(recorder.lrs[steps:], (1 - t) * 0.08 + t * 0.01, rtol=1e-6)
    assert swa.num_snapshots == 2  # ends of epochs 2 and 4, where the rate is swa_lr
    for i, var in enumerate(model.trainable_variables):
        mean = (recorder.snapshots[2][i] + recorder.snapshots[4][i]) / 2
        np.testing.assert_allclose(var.numpy(), mean, rtol=1e-6, atol=1e-7)


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch, hook):
        super().__init__()
        self.epoch, self.hook = epoch, hook

    def on_epoch_begin(self, epoch, logs=None):
        if self.hook == "begin" and epoch == self.epoch:
            raise RuntimeError("simulated preemption")

    def on_epoch_end(self, epoch, logs=None):
        if self.hook == "end" and epoch == self.epoch:
            raise RuntimeError("simulated preemption")


def test_backup_and_restore_resume_gives_the_uninterrupted_average(mnist, tmp_path):
    """Two preemptions: at the start of epoch 3, and at the end of epoch 3 after SWA
    saved its state but before BackupAndRestore saved its checkpoint, so the resume
    re-runs epoch 3 and must use SWA's state from epoch 2."""
    x, y = mnist
    x, y = x[:96], y[:96]
    fit = dict(batch_size=32, epochs=5, shuffle=False, verbose=0)
    reference = _model()
    init = reference.get_weights()

    def swa(name):
        return SWA(start_epoch=1, swa_lr=0.03, bn_data=_bn_batches(x, 48), backup_dir=str(tmp_path / name), verbose=0)

    reference.fit(x, y, callbacks=[swa("ref")], **fit)
    for hook in ("begin", "end"):
        interrupted = _model()
        interrupted.set_weights(init)
        backup = str(tmp_path / f"bk_{hook}")
        with pytest.raises(RuntimeError, match="preemption"):
            interrupted.fit(
                x, y, callbacks=[swa(hook), _Interrupt(3, hook), keras.callbacks.BackupAndRestore(backup)], **fit
            )
        resumed = _model()  # a fresh process rebuilds the model with new random weights
        resumed.fit(x, y, callbacks=[swa(hook), keras.callbacks.BackupAndRestore(backup)], **fit)
        for a, b in zip(reference.weights, resumed.weights):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=hook)
        assert not list((tmp_path / hook).glob("*.npz"))  # cleaned up after a finished run


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(start_epoch=1, start_fraction=0.5), "start_epoch"),
        (dict(start_epoch=-1), "start_epoch"),
        (dict(start_fraction=1.0), "start_fraction"),
        (dict(swa_lr=0.0), "swa_lr"),
        (dict(swa_schedule="linear"), "swa_schedule"),
        (dict(swa_schedule="cyclic"), "swa_lr"),
        (dict(cycle_length=0), "cycle_length"),
        (dict(period=0), "period"),
        (dict(swa_schedule="cyclic", swa_lr=0.1, cycle_length=2, period=3), "period"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SWA(**kwargs)


def test_start_beyond_last_epoch_raises_at_train_begin():
    model = _model(batchnorm=False)
    with pytest.raises(ValueError, match=r"start_epoch.*\[0, 2\]"):
        model.fit(np.zeros((4, 14, 14, 1)), np.zeros((4, 10)), epochs=3, verbose=0, callbacks=[SWA(start_epoch=3)])


def test_config_roundtrip():
    swa = SWA(start_fraction=0.6, swa_lr=0.05, swa_schedule="cyclic", cycle_length=3, backup_dir="/tmp/x", verbose=0)
    clone = SWA.from_config(swa.get_config())
    assert clone.get_config() == swa.get_config() and clone.period == 3

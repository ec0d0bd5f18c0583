"""Cyclical / one-cycle schedules against independent NumPy references, and the
per-batch CyclicalLR callback."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_effcnn.callbacks import CyclicalLR
from keras_effcnn.schedules import CyclicalLearningRate, OneCycle


# -- references -------------------------------------------------------------------
def clr_reference(step, base, peak, half, mode, gamma=1.0):
    """Triangle wave written with a modulo instead of Smith's floor/abs form."""
    period = 2 * half
    pos = step % period
    up = pos / half if pos <= half else 2.0 - pos / half
    cycle = step // period + 1
    scale = {"triangular": 1.0, "triangular2": 0.5 ** (cycle - 1), "exp_range": gamma**step}[mode]
    return base + (peak - base) * up * scale


def torch_one_cycle_reference(step, max_lr, total, pct=0.3, div=25.0, final_div=1e4, anneal="cos", three=False):
    """PyTorch OneCycleLR.get_lr, transcribed with plain floats."""
    initial = max_lr / div
    min_lr = initial / final_div
    if three:
        phases = [
            (float(pct * total) - 1, initial, max_lr),
            (float(2 * pct * total) - 2, max_lr, initial),
            (total - 1, initial, min_lr),
        ]
    else:
        phases = [(float(pct * total) - 1, initial, max_lr), (total - 1, max_lr, min_lr)]

    def cos(start, end, p):
        return end + (start - end) / 2.0 * (math.cos(math.pi * p) + 1)

    def lin(start, end, p):
        return (end - start) * p + start

    fn = cos if anneal == "cos" else lin
    start_step = 0
    for i, (end_step, lo, hi) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            return fn(lo, hi, (step - start_step) / (end_step - start_step))
        start_step = end_step


# -- CyclicalLearningRate ---------------------------------------------------------
@pytest.mark.parametrize("mode,gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.999)])
def test_clr_matches_reference_over_three_cycles(mode, gamma):
    base, peak, half = 1e-3, 6e-3, 10
    sched = CyclicalLearningRate(base, peak, half, mode=mode, gamma=gamma)
    steps = np.arange(0, 6 * half + 1)
    got = keras.ops.convert_to_numpy(sched(steps))
    want = np.array([clr_reference(s, base, peak, half, mode, gamma) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_clr_exp_range_stays_exact_after_50k_steps():
    """A gamma close to 1 over a long run: float32(gamma)**step would be 4e-4 off here."""
    base, peak, half, gamma = 1e-4, 1e-2, 2_000, 0.99999
    sched = CyclicalLearningRate(base, peak, half, mode="exp_range", gamma=gamma)
    steps = np.arange(49_000, 51_001, 25)
    got = keras.ops.convert_to_numpy(sched(steps)).astype("float64")
    want = np.array([clr_reference(s, base, peak, half, "exp_range", gamma) for s in steps])
    # Away from the troughs, where the float32 triangle (~1e-6 absolute) dominates.
    up = want - base > 0.1 * (peak - base) * gamma**steps
    assert up.sum() > 50
    np.testing.assert_allclose(got[up], want[up], rtol=2e-5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)


def test_clr_landmarks():
    base, peak, half = 0.01, 0.11, 8
    tri = CyclicalLearningRate(base, peak, half)
    assert float(tri(0)) == pytest.approx(base)  # start
    assert float(tri(half)) == pytest.approx(peak)  # peak
    assert float(tri(half // 2)) == pytest.approx((base + peak) / 2)  # mid-way up
    assert float(tri(2 * half)) == pytest.approx(base)  # end of the first cycle
    tri2 = CyclicalLearningRate(base, peak, half, mode="triangular2")
    assert float(tri2(3 * half)) == pytest.approx(base + (peak - base) / 2)  # second peak halved
    assert float(tri2(5 * half)) == pytest.approx(base + (peak - base) / 4)
    exp = CyclicalLearningRate(base, peak, half, mode="exp_range", gamma=0.99)
    assert float(exp(half)) == pytest.approx(base + (peak - base) * 0.99**half, rel=1e-5)


def test_clr_config_roundtrip():
    sched = CyclicalLearningRate(1e-4, 1e-2, 50, mode="exp_range", gamma=0.995)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sched))
    assert isinstance(clone, CyclicalLearningRate)
    assert clone.get_config() == sched.get_config()
    steps = np.arange(0, 300, 7)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(steps)), keras.ops.convert_to_numpy(sched(steps)))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(base_lr=0.1, max_lr=1.0, step_size=10, mode="cosine"), "mode"),
        (dict(base_lr=-0.1, max_lr=1.0, step_size=10), "base_lr"),
        (dict(base_lr=0.1, max_lr=0.05, step_size=10), "max_lr"),
        (dict(base_lr=0.1, max_lr=1.0, step_size=0), "step_size"),
        (dict(base_lr=0.1, max_lr=1.0, step_size=10, mode="exp_range", gamma=0.0), "gamma"),
    ],
)
def test_clr_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CyclicalLearningRate(**kwargs)


# -- OneCycle -------------------------------------------------------------------
@pytest.mark.parametrize(
    "total,kwargs",
    [
        (100, {}),
        (97, dict(pct_start=0.25, anneal="linear")),
        (120, dict(three_phase=True, div_factor=10.0, final_div_factor=100.0)),
        (50, dict(three_phase=True, anneal="linear", pct_start=0.4)),
    ],
)
def test_one_cycle_matches_pytorch_formulas(total, kwargs):
    max_lr = 0.4
    sched = OneCycle(max_lr, total, **kwargs)
    ref_kwargs = dict(
        pct=kwargs.get("pct_start", 0.3),
        div=kwargs.get("div_factor", 25.0),
        final_div=kwargs.get("final_div_factor", 1e4),
        anneal=kwargs.get("anneal", "cos"),
        three=kwargs.get("three_phase", False),
    )
    steps = np.arange(total)
    got = keras.ops.convert_to_numpy(sched(steps))
    want = np.array([torch_one_cycle_reference(s, max_lr, total, **ref_kwargs) for s in steps])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-10)


def test_one_cycle_landmarks_and_clamp():
    sched = OneCycle(0.5, 200, pct_start=0.3, div_factor=20.0, final_div_factor=50.0)
    assert float(sched(0)) == pytest.approx(0.5 / 20)  # start: max / div
    assert float(sched(59)) == pytest.approx(0.5)  # peak at pct * total - 1
    assert float(sched(199)) == pytest.approx(0.5 / 20 / 50, rel=1e-4)  # end: initial / final_div
    assert float(sched(10_000)) == pytest.approx(0.5 / 20 / 50, rel=1e-4)  # held after the end
    # Half-way through the cosine decay the rate is the mean of its ends.
    mid = 59 + (199 - 59) / 2
    assert float(sched(mid)) == pytest.approx((0.5 + 0.5 / 1000) / 2, rel=1e-5)


def test_one_cycle_serializes_inside_a_saved_model(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    sched = OneCycle(0.2, 40, three_phase=True, anneal="linear")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=sched), loss="mse", jit_compile=False)
    model.fit(np.ones((8, 3)), np.zeros((8, 2)), batch_size=4, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    restored = loaded.optimizer._learning_rate
    assert isinstance(restored, OneCycle) and restored.get_config() == sched.get_config()


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(max_lr=0.0, total_steps=10), "max_lr"),
        (dict(max_lr=0.1, total_steps=0), "total_steps"),
        (dict(max_lr=0.1, total_steps=10, pct_start=0.0), "pct_start"),
        (dict(max_lr=0.1, total_steps=10, pct_start=1.0), "pct_start"),
        (dict(max_lr=0.1, total_steps=10, pct_start=0.6, three_phase=True), "pct_start"),
        (dict(max_lr=0.1, total_steps=10, anneal="exp"), "anneal"),
        (dict(max_lr=0.1, total_steps=10, div_factor=0.0), "div_factor"),
        (dict(max_lr=0.1, total_steps=10, final_div_factor=-1.0), "final_div_factor"),
    ],
)
def test_one_cycle_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        OneCycle(**kwargs)


# -- CyclicalLR callback ----------------------------------------------------------
class _RecordLR(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self.seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_begin(self, logs=None):
        self.seen = []


def _tiny_model(optimizer):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    return model


def test_cyclical_lr_sets_rate_per_batch_and_logs_it():
    sched = CyclicalLearningRate(0.01, 0.05, step_size=3, mode="triangular2")
    model = _tiny_model(keras.optimizers.SGD(learning_rate=0.5))
    recorder = _RecordLR()
    history = model.fit(
        np.ones((40, 4)), np.zeros((40, 1)), batch_size=4, epochs=2, verbose=0,
        callbacks=[CyclicalLR(sched), recorder],
    )
    want = [clr_reference(s, 0.01, 0.05, 3, "triangular2") for s in range(20)]
    np.testing.assert_allclose(recorder.seen, want, rtol=1e-5)
    assert history.history["learning_rate"][-1] == pytest.approx(want[-1], rel=1e-5)


def test_cyclical_lr_accepts_a_plain_callable_and_resumes_from_iterations():
    model = _tiny_model(keras.optimizers.SGD(learning_rate=0.5))
    recorder = _RecordLR()
    model.fit(np.ones((8, 4)), np.zeros((8, 1)), batch_size=4, epochs=1, verbose=0,
              callbacks=[CyclicalLR(lambda step: 0.1 / (1 + int(step)))])
    # A second fit continues from optimizer.iterations == 2.
    model.fit(np.ones((8, 4)), np.zeros((8, 1)), batch_size=4, epochs=1, verbose=0,
              callbacks=[CyclicalLR(lambda step: 0.1 / (1 + int(step))), recorder])
    np.testing.assert_allclose(recorder.seen, [0.1 / 3, 0.1 / 4], rtol=1e-6)


def test_cyclical_lr_config_roundtrip():
    cb = CyclicalLR(OneCycle(0.3, 100), verbose=1)
    clone = CyclicalLR.from_config(cb.get_config())
    assert clone.verbose == 1 and clone.schedule.get_config() == cb.schedule.get_config()


def test_cyclical_lr_rejects_schedule_optimizer():
    model = _tiny_model(keras.optimizers.SGD(learning_rate=OneCycle(0.1, 10)))
    with pytest.raises(ValueError, match="float `learning_rate`"):
        model.fit(np.ones((4, 4)), np.zeros((4, 1)), verbose=0, callbacks=[CyclicalLR(OneCycle(0.1, 10))])

"""Corruptions against their closed forms, shift consistency against models built to pass or fail it."""

from __future__ import annotations

import colorsys
import json

import numpy as np
import pytest

from keras_effcnn import robustness as rb


@pytest.fixture(scope="module")
def mnist_test(data_dir):
    with np.load(data_dir / "mnist.npz") as d:
        return d["x_test"][:300, ..., None], d["y_test"][:300]


# ----------------------------------------------------------------------------- corruptions


@pytest.mark.parametrize("name", rb.CORRUPTIONS)
def test_severity_zero_is_identity(name, mnist_test):
    x, _ = mnist_test
    out = rb.corrupt(x, name, 0)
    np.testing.assert_array_equal(out, x.astype(np.float32) / 255.0)
    assert out.dtype == np.float32


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_noise_statistics_match_the_formula(severity):
    # Mid-grey keeps the noise inside [0, 1] (0.5 +- 5 sigma at most), so no clipping bias.
    x = np.full((40, 32, 32, 3), 0.5, np.float32)
    noise = rb.corrupt(x, "gaussian_noise", severity, seed=3).astype(np.float64) - 0.5
    sigma = rb.SEVERITY_PARAMETERS["gaussian_noise"][severity - 1]
    n = noise.size
    assert abs(noise.mean()) < 4 * sigma / np.sqrt(n)
    # The sample std of n normals has std sigma / sqrt(2 n).
    assert abs(noise.std() - sigma) < 4 * sigma / np.sqrt(2 * n)
    assert abs(np.mean(noise**4) / noise.var() ** 2 - 3.0) < 0.1  # Gaussian kurtosis
    np.testing.assert_array_equal(rb.corrupt(x, "gaussian_noise", severity, seed=3),
                                  rb.corrupt(x, "gaussian_noise", severity, seed=3))


@pytest.mark.parametrize("severity", [1, 4, 5])
def test_blur_of_a_point_is_the_gaussian_kernel(severity):
    sigma = rb.SEVERITY_PARAMETERS["blur"][severity - 1]
    x = np.zeros((1, 15, 15, 1), np.float32)
    x[0, 7, 7, 0] = 1.0
    out = rb.corrupt(x, "blur", severity)[0, :, :, 0]
    radius = int(4 * sigma + 0.5)
    t = np.arange(-7, 8)
    k = np.where(np.abs(t) <= radius, np.exp(-(t**2) / (2 * sigma**2)), 0.0)
    k /= k.sum()
    np.testing.assert_allclose(out, np.outer(k, k), atol=1e-7)
    flat = np.full((2, 6, 6, 3), 0.3, np.float32)  # a constant image is unchanged, border included
    np.testing.assert_allclose(rb.corrupt(flat, "blur", severity), flat, atol=1e-7)


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_contrast_keeps_channel_means_and_scales_deviations(severity):
    c = rb.SEVERITY_PARAMETERS["contrast"][severity - 1]
    x = np.random.default_rng(1).uniform(0.2, 0.8, (3, 8, 8, 3)).astype(np.float32)
    out = rb.corrupt(x, "contrast", severity)
    mean = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out.mean(axis=(1, 2), keepdims=True), mean, atol=1e-6)
    np.testing.assert_allclose(out - mean, c * (x - mean), atol=1e-6)


def test_brightness_matches_an_hsv_round_trip():
    x = np.random.default_rng(2).random((2, 5, 5, 3)).astype(np.float32)
    x[0, 0, 0] = 0.0  # black: hue/saturation undefined, becomes grey
    for severity in (1, 3, 5):
        c = rb.SEVERITY_PARAMETERS["brightness"][severity - 1]
        ref = np.array([[[colorsys.hsv_to_rgb(h, s, min(v + c, 1.0)) for h, s, v in
                          (colorsys.rgb_to_hsv(*map(float, px)) for px in row)] for row in img] for img in x])
        np.testing.assert_allclose(rb.corrupt(x, "brightness", severity), ref, atol=1e-6)
    grey = np.array([0.0, 0.5, 0.9], np.float32).reshape(1, 1, 3, 1)
    np.testing.assert_allclose(rb.corrupt(grey, "brightness", 5)[0, 0, :, 0], [0.3, 0.8, 1.0], atol=1e-6)


def test_shift_modes_against_numpy():
    x = np.random.default_rng(3).integers(0, 255, (3, 6, 7, 2)).astype(np.uint8)
    dy, dx = np.array([1, -2, 0]), np.array([3, 0, -1])
    circ = rb.shift(x, dy, dx, "circular")
    zero = rb.shift(x, dy, dx, "zero")
    for i in range(3):
        np.testing.assert_array_equal(circ[i], np.roll(x[i], (dy[i], dx[i]), axis=(0, 1)))
        ref = np.zeros_like(x[i])
        h, w = x.shape[1:3]
        ys, xs = slice(max(dy[i], 0), h + min(dy[i], 0)), slice(max(dx[i], 0), w + min(dx[i], 0))
        yr, xr = slice(max(-dy[i], 0), h + min(-dy[i], 0)), slice(max(-dx[i], 0), w + min(-dx[i], 0))
        ref[ys, xs] = x[i][yr, xr]
        np.testing.assert_array_equal(zero[i], ref)


@pytest.mark.parametrize("call, match", [
    (lambda x: rb.corrupt(x, "fog", 1), "corruption"),
    (lambda x: rb.corrupt(x, "blur", 6), "severity"),
    (lambda x: rb.corrupt(x * 3.0, "blur", 1), r"\[0, 1\]"),
    (lambda x: rb.shift(x, 1, 1, "reflect"), "mode"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.full((1, 4, 4, 1), 0.5, np.float32))


# ----------------------------------------------------------------------------- the report


def _invariant_model():
    """Per-pixel 1x1 conv, then the mean over all pixels: a circular shift only permutes
    the pixels, so the prediction cannot change."""
    import keras

    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 1, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="gap_over_1x1")


def _sensitive_model():
    """A dense layer on the flattened pixels: every pixel position has its own weights."""
    import keras

    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(10, kernel_initializer=keras.initializers.RandomNormal(0, 1, seed=1))],
                            name="flatten_dense")


def test_shift_consistency_separates_invariant_and_sensitive_models(mnist_test):
    x, y = mnist_test
    inv = rb.evaluate_robustness(_invariant_model(), x, y, corruptions=(), shifts=(1, 4))
    sens = rb.evaluate_robustness(_sensitive_model(), x, y, corruptions=(), shifts=(1, 4))
    assert inv.shift_consistency == {1: 1.0, 4: 1.0}
    assert sens.shift_consistency[4] < 0.9
    assert sens.shift_consistency[4] < sens.shift_consistency[1] < 1.0
    # Zero-filled shifts drop pixels: even the GAP model is no longer exactly invariant
    # in general, but MNIST digits sit on a black border, so up to 2 px nothing is lost.
    zero = rb.evaluate_robustness(_invariant_model(), x, y, corruptions=(), shifts=(2,), shift_mode="zero")
    assert zero.shift_consistency == {2: 1.0}


def test_report_accuracies_and_outputs(mnist_test, tmp_path):
    model = _sensitive_model()
    x, y = mnist_test
    report = rb.evaluate_robustness(model, x, y, corruptions=("contrast", "gaussian_noise"), severities=(1, 2),
                                    shifts=(1,), seed=5)
    predict = lambda images: np.argmax(model.predict(images, verbose=0), axis=1)  # noqa: E731
    assert report.clean_accuracy == np.mean(predict(x / np.float32(255)) == y)
    assert report.corruption_accuracy["contrast"][2] == np.mean(predict(rb.corrupt(x, "contrast", 2)) == y)
    assert report.n_images == 300 and report.model_name == "flatten_dense"
    values = [a for v in report.corruption_accuracy.values() for a in v.values()]
    assert report.mean_corruption_accuracy == pytest.approx(np.mean(values))

    paths = report.write(tmp_path)
    assert rb.RobustnessReport.from_dict(json.loads(paths["json"].read_text())) == report
    md = paths["markdown"].read_text()
    assert f"| contrast | {report.corruption_accuracy['contrast'][1]:.4f} |" in md
    assert f"| 1 | {report.shift_consistency[1]:.4f} |" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_the_report(mnist_test, tmp_path, data_dir):
    from keras_effcnn import cli

    model = _invariant_model()
    model.save(tmp_path / "m.keras")
    out = tmp_path / "out"
    code = cli.main(["robustness", str(tmp_path / "m.keras"), "--data-dir", str(data_dir), "--n", "300",
                     "--corruptions", "blur", "--severities", "1", "--shifts", "2", "--out", str(out)])
    assert code == 0
    saved = json.loads((out / "robustness.json").read_text())
    x, y = mnist_test
    direct = rb.evaluate_robustness(model, x, y, corruptions=("blur",), severities=(1,), shifts=(2,))
    assert rb.RobustnessReport.from_dict(saved).corruption_accuracy == direct.corruption_accuracy
    assert saved["shift_consistency"] == {"2": 1.0}
    assert (out / "robustness.png").exists() and (out / "robustness.md").exists()
    assert cli.main(["robustness", str(tmp_path / "m.keras"), "--data-dir", str(data_dir), "--n", "0",
                     "--out", str(out)]) == 2

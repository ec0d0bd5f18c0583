"""BlurPool2D against Zhang's definition: binomial filter, padding rule, NumPy reference."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_effcnn.layers import BlurPool2D, binomial_kernel, blur_max_pool

pytestmark = pytest.mark.backend_neutral  # also run with KERAS_BACKEND=jax in CI


def pascal_row(n: int) -> np.ndarray:
    """Row n-1 of Pascal's triangle by repeated [1, 1] convolution (independent of math.comb)."""
    row = np.array([1.0])
    for _ in range(n - 1):
        row = np.convolve(row, [1.0, 1.0])
    return row


def numpy_blurpool(x: np.ndarray, filter_size: int, stride: int, padding: str) -> np.ndarray:
    """Zhang's BlurPool: pad floor/ceil((f-1)/2), correlate each channel, keep every stride-th pixel."""
    row = pascal_row(filter_size)
    kernel = np.outer(row, row) / np.outer(row, row).sum()
    before, after = int(math.floor((filter_size - 1) / 2)), int(math.ceil((filter_size - 1) / 2))
    mode = "reflect" if padding == "reflect" else "constant"
    xp = np.pad(x.astype(np.float64), ((0, 0), (before, after), (before, after), (0, 0)), mode=mode)
    height, width = xp.shape[1] - filter_size + 1, xp.shape[2] - filter_size + 1
    out = np.zeros((x.shape[0], height, width, x.shape[3]))
    for i in range(filter_size):
        for j in range(filter_size):
            out += kernel[i, j] * xp[:, i : i + height, j : j + width]
    return out[:, ::stride, ::stride]


def test_kernel_is_normalized_binomial_outer_product():
    for filter_size in range(1, 8):
        row = pascal_row(filter_size)
        expected = np.outer(row, row) / row.sum() ** 2
        np.testing.assert_allclose(binomial_kernel(filter_size), expected, rtol=0, atol=1e-15)

        layer = BlurPool2D(filter_size=filter_size, strides=1, padding="zero")
        layer.build((None, 15, 15, 3))
        assert layer.kernel.shape == (filter_size, filter_size, 3, 1)
        for channel in range(3):
            np.testing.assert_allclose(layer.kernel[:, :, channel, 0], expected, rtol=1e-6)

        # The op really applies that filter: the impulse response is the kernel.
        impulse = np.zeros((1, 15, 15, 3), "float32")
        impulse[0, 7, 7, :] = 1.0
        response = np.asarray(layer(impulse))
        # Correlation puts the impulse's footprint at 7 + pad_before - (f - 1) = 7 - pad_after.
        lo = 7 - filter_size // 2
        for channel in range(3):
            window = response[0, lo : lo + filter_size, lo : lo + filter_size, channel]
            np.testing.assert_allclose(window, expected, atol=1e-7, err_msg=f"size {filter_size}")
        assert np.isclose(response.sum(), 3.0, atol=1e-5)


@pytest.mark.parametrize("padding", ["reflect", "zero"])
def test_matches_numpy_reference(padding):
    rng = np.random.default_rng(0)
    for filter_size in range(1, 8):
        for stride in (1, 2, 3):
            for height, width in ((9, 12), (8, 7)):
                x = rng.standard_normal((2, height, width, 3)).astype("float32")
                got = np.asarray(BlurPool2D(filter_size, stride, padding)(x))
                np.testing.assert_allclose(
                    got,
                    numpy_blurpool(x, filter_size, stride, padding),
                    atol=1e-5,
                    err_msg=f"filter_size={filter_size} stride={stride} shape={(height, width)}",
                )


def test_output_shape_is_ceil_of_size_over_stride():
    cases = [(32, 32, 2, 3), (7, 9, 2, 3), (7, 9, 3, 5), (10, 5, 4, 7), (5, 6, 1, 4), (1, 1, 2, 1)]
    for height, width, stride, filter_size in cases:
        layer = BlurPool2D(filter_size, stride, padding="zero")
        expected = (2, math.ceil(height / stride), math.ceil(width / stride), 4)
        assert layer.compute_output_shape((2, height, width, 4)) == expected
        assert tuple(layer(np.zeros((2, height, width, 4), "float32")).shape) == expected
        assert layer.compute_output_shape((None, None, width, 4)) == (None, None, expected[2], 4)


def test_constant_image_stays_constant():
    image = np.full((1, 11, 12, 2), 0.7, "float32")
    for filter_size in (2, 3, 4, 5, 7):
        reflect = np.asarray(BlurPool2D(filter_size, 2, "reflect")(image))
        np.testing.assert_allclose(reflect, 0.7, rtol=1e-6, err_msg=f"size {filter_size}")

        zero = np.asarray(BlurPool2D(filter_size, 1, "zero")(image))
        before, after = (filter_size - 1) // 2, filter_size // 2
        interior = zero[:, before : 11 - after, before : 12 - after]
        np.testing.assert_allclose(interior, 0.7, rtol=1e-6, err_msg=f"size {filter_size}")
        # Zero padding darkens the border: the mass that falls outside the image is lost.
        assert zero[0, -1, -1, 0] < 0.7 - 1e-3
        if before > 0:
            assert zero[0, 0, 0, 0] < 0.7 - 1e-3


def test_has_no_weights():
    layer = BlurPool2D(5, 2)
    layer.build((None, 16, 16, 8))
    assert layer.trainable_weights == [] and layer.non_trainable_weights == []
    assert layer.count_params() == 0


def _smooth_noise(rng, count: int, size: int, channels: int, sigma: float) -> np.ndarray:
    """Periodic Gaussian-filtered white noise (so circular shifts create no seam)."""
    noise = rng.standard_normal((count, size, size, channels))
    freq = np.fft.fftfreq(size)
    gain = np.exp(-2 * (np.pi * sigma) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    spectrum = np.fft.fft2(noise, axes=(1, 2)) * gain[None, :, :, None]
    images = np.real(np.fft.ifft2(spectrum, axes=(1, 2)))
    return ((images - images.mean()) / images.std()).astype("float32")


def _shift_inconsistency(downsample, images: np.ndarray) -> tuple[float, float]:
    """How much a stride-2 output changes when the input moves by one pixel.

    A 1-px input shift is a half-pixel output shift, so the shifted output is
    compared with the half-pixel linear interpolation of the unshifted one
    (map distance) and with its global average (what a GAP head sees). Border
    rows/columns are dropped: padding, not aliasing, decides them.
    """
    out = np.asarray(downsample(images))
    shifted = np.asarray(downsample(np.roll(images, 1, axis=2)))
    halfway = 0.5 * (out + np.roll(out, 1, axis=2))
    scale = out[:, 1:-1, 1:-1].std()
    map_distance = np.abs(halfway - shifted)[:, 1:-1, 2:-1].mean() / scale
    gap = lambda t: t[:, 1:-1, 1:-1].mean(axis=(1, 2))  # noqa: E731
    gap_distance = np.abs(gap(out) - gap(shifted)).mean() / gap(out).std()
    return map_distance, gap_distance


def test_blur_max_pool_is_more_shift_consistent_than_max_pool():
    images = _smooth_noise(np.random.default_rng(0), 64, 32, 3, sigma=1.0)
    max_map, max_gap = _shift_inconsistency(keras.layers.MaxPooling2D(2, 2), images)
    blur3_map, blur3_gap = _shift_inconsistency(blur_max_pool(filter_size=3), images)
    blur5_map, _ = _shift_inconsistency(blur_max_pool(filter_size=5), images)
    assert blur3_map < 0.75 * max_map, (blur3_map, max_map)
    assert blur3_gap < 0.75 * max_gap, (blur3_gap, max_gap)
    # A wider low-pass filter aliases less still.
    assert blur5_map < blur3_map


def test_blur_max_pool_with_filter_size_1_is_max_pool():
    x = np.random.default_rng(1).standard_normal((2, 10, 12, 3)).astype("float32")
    plain = np.asarray(keras.layers.MaxPooling2D(2, 2)(x))
    np.testing.assert_array_equal(np.asarray(blur_max_pool(filter_size=1)(x)), plain)
    assert blur_max_pool()(x).shape == plain.shape


def test_bad_arguments_raise():
    cases = [
        ({"filter_size": 0}, "filter_size"),
        ({"filter_size": 8}, "filter_size"),
        ({"filter_size": 2.5}, "filter_size"),
        ({"strides": 0}, "strides"),
        ({"padding": "same"}, "padding"),
    ]
    for kwargs, argument in cases:
        with pytest.raises(ValueError, match=argument):
            BlurPool2D(**kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\(batch, H, W, C\)"):
        BlurPool2D()(np.zeros((2, 8, 3), "float32"))
    # Reflect padding cannot mirror a 1-pixel-wide map.
    with pytest.raises(ValueError, match="padding"):
        BlurPool2D(3, 2, "reflect")(np.zeros((1, 1, 8, 3), "float32"))

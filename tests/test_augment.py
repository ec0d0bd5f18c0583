"""Mixup, Cutout, crop+flip, shift and brightness against NumPy references and invariants read
from their output (never from their own samplers). Label smoothing on mixed targets is
checked through the recipe's compiled loss in test_recipe_wiring.py."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_effcnn import augment


def _batches(ds):
    return [tuple(t.numpy() for t in batch) for batch in ds]


def _indexed_batch(n=12, size=5, channels=3, seed=0):
    """Random images whose one-hot label is their own index in the batch."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size, channels)).astype("float32")
    return images, np.eye(n, dtype="float32")


# -- Mixup --------------------------------------------------------------------------
def _mix(mode, alpha=0.4, seed=(3, 9)):
    images, labels = _indexed_batch()
    aug = augment.mixup(alpha, mode=mode, seed=3)
    out_x, out_y = aug.stateless(tf.constant(images), tf.constant(labels), tf.constant(seed))
    return images, out_x.numpy(), out_y.numpy()


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_mixup_labels_are_soft_and_match_the_image_mix(mode):
    images, out_x, out_y = _mix(mode)
    np.testing.assert_allclose(out_y.sum(axis=1), 1.0, rtol=1e-6)
    assert ((out_y > 1e-7).sum(axis=1) <= 2).all()  # each sample mixes with one partner
    # Labels are one-hot of the index, so the mixed label row holds the weights of the
    # images that were mixed: image_i = sum_j y_ij x_j.
    np.testing.assert_allclose(out_x, np.einsum("ij,jhwc->ihwc", out_y, images), rtol=1e-5, atol=1e-6)


def test_mixup_batch_mode_shares_one_lambda_and_sample_mode_draws_one_each():
    for mode in ("batch", "sample"):
        _, _, out_y = _mix(mode)
        # The weight a sample keeps of itself is lam (1 where it was paired with itself).
        own = np.diag(out_y)
        lam = own[own < 1 - 1e-6]
        assert len(lam) >= len(own) // 2
        distinct = len(np.unique(np.round(lam, 5)))
        if mode == "batch":
            assert distinct == 1, lam
        else:
            assert distinct > len(lam) // 2, lam


@pytest.mark.parametrize("alpha", [0.2, 2.0])
def test_mixup_lambda_has_beta_moments(alpha):
    lam, perm = augment.Mixup(alpha, mode="sample").sample(40_000, tf.constant([1, 2]))
    lam = lam.numpy()
    assert sorted(perm.numpy().tolist()) == list(range(40_000))
    assert lam.mean() == pytest.approx(0.5, abs=0.01)
    assert lam.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.03)


def _ks_uniform(lam):
    lam = np.sort(lam)
    return np.max(np.abs(lam - (np.arange(1, lam.size + 1) / lam.size)))


def test_mixup_alpha_one_is_uniform():
    lam = augment.Mixup(1.0, mode="sample").sample(20_000, tf.constant([5, 6]))[0].numpy()
    assert _ks_uniform(lam) < 1.63 / np.sqrt(lam.size)  # Kolmogorov-Smirnov at the 1% level


def test_mixup_batch_mode_lambda_is_uniform_across_batches():
    """alpha = 1: the one lambda of each batch, over 2,000 batches of a mapped dataset."""
    images, labels = np.eye(2, dtype="float32").reshape(2, 1, 2, 1), np.eye(2, dtype="float32")
    ds = tf.data.Dataset.from_tensors((images, labels)).repeat(2_000).map(augment.mixup(1.0, seed=4))
    # A batch of two either swaps (row 0 = [lam, 1 - lam]) or not (row 0 = [1, 0]):
    # read lam from the swapped batches, where it is the weight row 0 keeps of itself.
    rows = np.stack([y.numpy()[0] for _, y in ds])
    lam = rows[rows[:, 0] < 1 - 1e-7, 0]
    assert 800 < lam.size < 1200
    assert _ks_uniform(lam) < 1.63 / np.sqrt(lam.size)


def _image_ds(n=24, size=8, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, size, size, 3)).astype("float32")
    y = np.eye(classes, dtype="float32")[rng.integers(0, classes, n)]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


@pytest.mark.parametrize(
    "factory",
    [
        lambda s: augment.mixup(0.3, seed=s),
        lambda s: augment.cutout(3, seed=s),
        lambda s: augment.random_crop_flip(2, seed=s),
        lambda s: augment.random_brightness(0.3, seed=s),
    ],
)
def test_seeded_streams_are_reproducible_and_seed_dependent(factory):
    ds = _image_ds()
    first = _batches(ds.map(factory(7)))
    again = _batches(ds.map(factory(7)))
    other = _batches(ds.map(factory(8)))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    # A second pass over the same mapped dataset (a new epoch) draws new augmentations.
    mapped = ds.map(factory(7))
    epoch1, epoch2 = _batches(mapped), _batches(mapped)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(epoch1, epoch2))


# -- Cutout -------------------------------------------------------------------------
# The invariants are read from the output alone, never from the augmentation's sampler.
def _square_extents(mask):
    """(first row, row count, first col, col count) of a mask that must be one
    axis-aligned filled rectangle."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert rows.size and cols.size, "nothing was cut"
    assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1)), "rows not contiguous"
    assert np.array_equal(cols, np.arange(cols[0], cols[-1] + 1)), "columns not contiguous"
    filled = np.zeros_like(mask)
    filled[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    np.testing.assert_array_equal(mask, filled)  # a filled rectangle, not a ragged blob
    return rows[0], rows.size, cols[0], cols.size


def _assert_clipped_square(mask, length):
    """A side shorter than ``length`` only where the square was clipped at a border;
    returns the (rows, cols) cut."""
    height, width = mask.shape
    top, n_rows, left, n_cols = _square_extents(mask)
    for start, n, size in ((top, n_rows, height), (left, n_cols, width)):
        assert n <= length
        if n < length:
            assert start == 0 or start + n == size, "a short side away from the border"
            # The centre lies in the image, so at least the centre's half of the side is left.
            assert n >= min(length - length // 2, length // 2 + 1)
    return n_rows, n_cols


@pytest.mark.parametrize("length", [4, 5])
def test_cutout_zeroes_one_clipped_square_of_side_length(length):
    n, h, w = 256, 10, 9
    images = np.random.default_rng(1).uniform(0.1, 1.0, (n, h, w, 2)).astype("float32")
    out, _ = augment.cutout(length, seed=0).stateless(tf.constant(images), tf.zeros([n, 3]), tf.constant([11, 4]))
    out = out.numpy()
    zero = out == 0
    np.testing.assert_array_equal(zero[..., 0], zero[..., 1])  # all channels cut alike
    np.testing.assert_array_equal(out[~zero], images[~zero])  # nothing else changed
    sides = [_assert_clipped_square(mask, length) for mask in zero[..., 0]]
    # Full squares are length x length also for odd lengths (DeVries' code: (L-1) x (L-1)),
    # and the centre is uniform over the whole image, so squares also overhang every border.
    assert (length, length) in sides
    tops = [np.flatnonzero(m.any(axis=1))[0] for m in zero[..., 0]]
    bottoms = [np.flatnonzero(m.any(axis=1))[-1] for m in zero[..., 0]]
    lefts = [np.flatnonzero(m.any(axis=0))[0] for m in zero[..., 0]]
    rights = [np.flatnonzero(m.any(axis=0))[-1] for m in zero[..., 0]]
    assert min(tops) == 0 and max(bottoms) == h - 1 and min(lefts) == 0 and max(rights) == w - 1
    assert any(r < length for r, _ in sides) and any(c < length for _, c in sides)


def test_cutout_mean_fill_uses_each_images_channel_means():
    n, size = 16, 8
    images = np.random.default_rng(2).random((n, size, size, 3)).astype("float32")
    out, _ = augment.cutout(4, fill="mean", seed=0).stateless(tf.constant(images), tf.zeros([n, 2]), tf.constant([0, 1]))
    out = out.numpy()
    means = images.mean(axis=(1, 2), keepdims=True)
    changed = (out != images).any(axis=-1)
    for i in range(n):
        _assert_clipped_square(changed[i], 4)
        np.testing.assert_allclose(out[i][changed[i]], np.broadcast_to(means[i, 0], out[i][changed[i]].shape), rtol=1e-6)


# -- crop + flip ------------------------------------------------------------------
def _find_windows(out, padded, flips=(False, True)):
    """Every (offset y, offset x, flipped) whose window of ``padded`` equals ``out``,
    by exhaustive search; the flip is np.fliplr of the window."""
    h, w = out.shape[:2]
    found = []
    for oy in range(padded.shape[0] - h + 1):
        for ox in range(padded.shape[1] - w + 1):
            window = padded[oy : oy + h, ox : ox + w]
            for flip in flips:
                if np.array_equal(out, np.fliplr(window) if flip else window):
                    found.append((oy, ox, flip))
    return found


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_random_crop_flip_output_is_a_window_of_the_padded_image(mode):
    n, h, w, p = 200, 7, 6, 3
    images = np.random.default_rng(3).random((n, h, w, 2)).astype("float32")
    aug = augment.random_crop_flip(p, mode=mode, seed=0)
    out, _ = aug.stateless(tf.constant(images), tf.zeros([n, 2]), tf.constant([8, 2]))
    padded = np.pad(images, [(0, 0), (p, p), (p, p), (0, 0)], mode=mode)
    matches = [_find_windows(o, pad) for o, pad in zip(out.numpy(), padded)]
    assert all(matches)
    if mode == "reflect":
        return  # a mirrored window of a reflect-padded image can equal another window
    assert all(len(m) == 1 for m in matches)  # random content: exactly one window fits
    oy, ox, flips = np.array([m[0] for m in matches]).T
    # Offsets span the whole padding, and about half the images are mirrored.
    assert set(oy) == set(ox) == set(range(2 * p + 1))
    assert 0.35 < flips.mean() < 0.65


def test_random_shift_is_an_unflipped_window_of_the_zero_padded_image():
    n, size, shift = 100, 6, 2
    # Asymmetric content, so a mirrored window could not pass for an unflipped one.
    images = np.random.default_rng(5).random((n, size, size, 1)).astype("float32")
    out, _ = augment.random_shift(shift, seed=0).stateless(tf.constant(images), tf.zeros([n, 2]), tf.constant([1, 1]))
    padded = np.pad(images, [(0, 0), (shift, shift), (shift, shift), (0, 0)])
    matches = [_find_windows(o, pad) for o, pad in zip(out.numpy(), padded)]
    assert all(len(m) == 1 and not m[0][2] for m in matches)
    offsets = {m[0][:2] for m in matches}
    assert {o for o, _ in offsets} == {o for _, o in offsets} == set(range(2 * shift + 1))


# -- composition ------------------------------------------------------------------
def test_apply_equals_chained_maps_and_is_deterministic_in_parallel():
    ds = _image_ds(n=32)

    def fresh():
        return augment.random_crop_flip(2, seed=1), augment.cutout(3, seed=2), augment.mixup(0.2, seed=3)

    applied = _batches(augment.apply(ds, *fresh(), num_parallel_calls=4))
    crop, cut, mix = fresh()
    chained = _batches(ds.map(crop).map(cut).map(mix))
    for a, b in zip(applied, chained):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_pipeline_on_real_cifar_keeps_range_and_label_mass(data_dir):
    with np.load(data_dir / "cifar10.npz") as data:
        x = data["x_test"][:256].astype("float32") / 255.0
        y = np.eye(10, dtype="float32")[data["y_test"][:256].reshape(-1)]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(128)
    ds = augment.apply(ds, augment.random_crop_flip(4, seed=1), augment.cutout(16, seed=2), augment.mixup(0.2, seed=3))
    for images, labels in ds:
        assert images.shape == (128, 32, 32, 3)
        assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0
        np.testing.assert_allclose(tf.reduce_sum(labels, axis=1).numpy(), 1.0, rtol=1e-6)
        # Each image lost a 16x16 square (up to clipping) to zeros before mixing.
        assert float(tf.reduce_mean(tf.cast(images == 0, "float32"))) > 0.02


# -- validation ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: augment.mixup(0.0), "alpha"),
        (lambda: augment.mixup(-1.0), "alpha"),
        (lambda: augment.mixup(0.2, mode="pair"), "mode"),
        (lambda: augment.cutout(0), "length"),
        (lambda: augment.cutout(4, fill="noise"), "fill"),
        (lambda: augment.random_crop_flip(-1), "padding"),
        (lambda: augment.random_crop_flip(2, mode="wrap"), "mode"),
        (lambda: augment.random_shift(-2), "max_shift"),
        (lambda: augment.random_brightness(0.0), "max_delta"),
        (lambda: augment.random_brightness(1.5), "max_delta"),
    ],
)
def test_bad_arguments_raise(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize(
    "aug,name",
    [
        (lambda: augment.cutout(9), "length"),
        (lambda: augment.random_crop_flip(8, mode="reflect"), "padding"),
    ],
)
def test_shape_dependent_checks_fire_when_the_map_is_traced(aug, name):
    with pytest.raises(ValueError, match=name):
        _image_ds(size=8).map(aug())


# -- Brightness ---------------------------------------------------------------------
def test_random_brightness_adds_one_bounded_offset_per_image_then_clips():
    rng = np.random.default_rng(1)
    images = rng.uniform(0.2, 0.8, (256, 6, 6, 3)).astype("float32")  # far from the clip bounds...
    images[:, 0, 0, :] = [0.0, 1.0, 0.5]  # ...except one pixel per image at each bound
    out, labels = augment.random_brightness(0.15, seed=4).stateless(tf.constant(images), tf.zeros([256, 2]),
                                                                    tf.constant([1, 2]))
    out = out.numpy()
    assert out.min() >= 0.0 and out.max() <= 1.0 and labels.shape == (256, 2)
    diff = out - images
    delta = diff[:, 1:, :, :].reshape(256, -1)
    # One offset per image, the same on every pixel and channel that was not clipped.
    np.testing.assert_allclose(delta, delta[:, :1].repeat(delta.shape[1], 1), atol=1e-6)
    d = delta[:, 0]
    assert np.abs(d).max() <= 0.15 + 1e-6
    # Uniform on [-0.15, 0.15]: mean 0 and sd 0.15 / sqrt(3) within sampling error, both signs reached.
    assert abs(d.mean()) < 4 * 0.15 / np.sqrt(3) / np.sqrt(256)
    assert abs(d.std() - 0.15 / np.sqrt(3)) < 0.015 and d.min() < -0.12 and d.max() > 0.12
    # The pixels at the bounds are clipped exactly as NumPy clips x + d.
    np.testing.assert_allclose(out[:, 0, 0, :], np.clip(images[:, 0, 0, :] + d[:, None], 0, 1), atol=1e-6)


def test_random_brightness_rejects_integer_images():
    with pytest.raises(ValueError, match="float images"):
        augment.random_brightness(0.1).stateless(tf.zeros([2, 4, 4, 1], tf.uint8), tf.zeros([2, 2]), tf.constant([0, 1]))


def test_mixup_rejects_integer_labels_and_unbatched_images():
    ds = tf.data.Dataset.from_tensor_slices((tf.zeros([4, 8, 8, 3]), tf.range(4)))
    with pytest.raises(ValueError, match="one-hot"):
        ds.batch(2).map(augment.mixup(0.2))
    with pytest.raises(ValueError, match="batched"):
        ds.map(augment.cutout(2))

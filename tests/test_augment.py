"""Mixup, Cutout, crop+flip and shift against NumPy references; label smoothing on
mixed targets against Keras' loss."""

from __future__ import annotations

import keras
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
def test_mixup_labels_are_soft_and_match_the_image_mix():
    images, labels = _indexed_batch()
    out_x, out_y = augment.mixup(0.4, seed=3).stateless(tf.constant(images), tf.constant(labels), tf.constant([3, 9]))
    out_x, out_y = out_x.numpy(), out_y.numpy()
    np.testing.assert_allclose(out_y.sum(axis=1), 1.0, rtol=1e-6)
    assert ((out_y > 1e-7).sum(axis=1) <= 2).all()  # each sample mixes with one partner
    # Labels are one-hot of the index, so the mixed label row holds the weights of the
    # images that were mixed: image_i = sum_j y_ij x_j.
    np.testing.assert_allclose(out_x, np.einsum("ij,jhwc->ihwc", out_y, images), rtol=1e-5, atol=1e-6)
    lam = out_y[np.arange(len(out_y)), np.arange(len(out_y))]
    assert len(np.unique(np.round(lam, 6))) > len(lam) // 2  # a lambda per sample


@pytest.mark.parametrize("alpha", [0.2, 2.0])
def test_mixup_lambda_has_beta_moments(alpha):
    lam, perm = augment.Mixup(alpha).sample(40_000, tf.constant([1, 2]))
    lam = lam.numpy()
    assert sorted(perm.numpy().tolist()) == list(range(40_000))
    assert lam.mean() == pytest.approx(0.5, abs=0.01)
    assert lam.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.03)


def test_mixup_alpha_one_is_uniform():
    lam = np.sort(augment.Mixup(1.0).sample(20_000, tf.constant([5, 6]))[0].numpy())
    ks = np.max(np.abs(lam - (np.arange(1, lam.size + 1) / lam.size)))
    assert ks < 1.63 / np.sqrt(lam.size)  # Kolmogorov-Smirnov at the 1% level


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
def _expected_cutout_mask(cy, cx, length, height, width):
    mask = np.zeros((len(cy), height, width), bool)
    for i, (y, x) in enumerate(zip(cy, cx)):
        top, left = y - length // 2, x - length // 2
        mask[i, max(top, 0) : min(top + length, height), max(left, 0) : min(left + length, width)] = True
    return mask


@pytest.mark.parametrize("length", [4, 5])
def test_cutout_zeroes_exactly_the_clipped_square(length):
    n, h, w = 64, 10, 9
    images = np.random.default_rng(1).uniform(0.1, 1.0, (n, h, w, 2)).astype("float32")
    seed = tf.constant([11, 4])
    aug = augment.cutout(length, seed=0)
    out, _ = aug.stateless(tf.constant(images), tf.zeros([n, 3]), seed)
    cy, cx = (t.numpy() for t in augment.Cutout.sample_centers(n, h, w, seed))
    mask = _expected_cutout_mask(cy, cx, length, h, w)
    np.testing.assert_array_equal(out.numpy() == 0, np.repeat(mask[..., None], 2, axis=-1))
    np.testing.assert_array_equal(out.numpy()[~mask], images[~mask])
    # Centres cover the whole image, so squares overhang the border and get clipped.
    assert cy.min() == 0 and cy.max() == h - 1 and cx.min() == 0 and cx.max() == w - 1
    areas = mask.sum(axis=(1, 2))
    assert areas.max() == length * length and areas.min() < length * length


def test_cutout_mean_fill_uses_each_images_channel_means():
    n, size = 16, 8
    images = np.random.default_rng(2).random((n, size, size, 3)).astype("float32")
    seed = tf.constant([0, 1])
    out, _ = augment.cutout(4, fill="mean", seed=0).stateless(tf.constant(images), tf.zeros([n, 2]), seed)
    cy, cx = (t.numpy() for t in augment.Cutout.sample_centers(n, size, size, seed))
    mask = _expected_cutout_mask(cy, cx, 4, size, size)
    want = np.where(mask[..., None], images.mean(axis=(1, 2), keepdims=True), images)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)


# -- crop + flip ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_random_crop_flip_matches_numpy(mode):
    n, h, w, p = 40, 7, 6, 3
    images = np.random.default_rng(3).random((n, h, w, 2)).astype("float32")
    seed = tf.constant([8, 2])
    aug = augment.random_crop_flip(p, mode=mode, seed=0)
    out, _ = aug.stateless(tf.constant(images), tf.zeros([n, 2]), seed)
    oy, ox, flips = (t.numpy() for t in aug.sample(n, seed))
    padded = np.pad(images, [(0, 0), (p, p), (p, p), (0, 0)], mode=mode)
    want = np.stack([padded[i, oy[i] : oy[i] + h, ox[i] : ox[i] + w] for i in range(n)])
    want[flips] = want[flips, :, ::-1]
    np.testing.assert_array_equal(out.numpy(), want)
    assert 0 < flips.mean() < 1


def test_offsets_span_the_padding_and_shift_never_flips():
    aug = augment.random_crop_flip(4, seed=0)
    oy, ox, flips = (t.numpy() for t in aug.sample(5000, tf.constant([1, 1])))
    assert (oy.min(), oy.max(), ox.min(), ox.max()) == (0, 8, 0, 8)
    assert flips.mean() == pytest.approx(0.5, abs=0.03)
    shift = augment.random_shift(2, seed=0)
    _, _, no_flips = (t.numpy() for t in shift.sample(1000, tf.constant([1, 1])))
    assert not no_flips.any() and shift.padding == 2 and shift.mode == "constant"


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


# -- label smoothing on mixed targets -----------------------------------------------
@pytest.mark.parametrize("from_logits", [False, True])
def test_label_smoothing_smooths_the_mixed_target(from_logits):
    images, labels = _indexed_batch(n=10)
    _, mixed = augment.mixup(0.5, seed=0).stateless(tf.constant(images), tf.constant(labels), tf.constant([0, 4]))
    mixed = mixed.numpy()
    rng = np.random.default_rng(4)
    logits = rng.normal(size=mixed.shape).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    eps, k = 0.1, mixed.shape[1]
    target = (1 - eps) * mixed + eps / k
    want = np.mean(-(target * np.log(probs)).sum(axis=1))
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=eps, from_logits=from_logits)
    got = float(loss(mixed, logits if from_logits else probs))
    assert got == pytest.approx(want, rel=1e-5)


# -- validation ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: augment.mixup(0.0), "alpha"),
        (lambda: augment.mixup(-1.0), "alpha"),
        (lambda: augment.cutout(0), "length"),
        (lambda: augment.cutout(4, fill="noise"), "fill"),
        (lambda: augment.random_crop_flip(-1), "padding"),
        (lambda: augment.random_crop_flip(2, mode="wrap"), "mode"),
        (lambda: augment.random_shift(-2), "max_shift"),
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


def test_mixup_rejects_integer_labels_and_unbatched_images():
    ds = tf.data.Dataset.from_tensor_slices((tf.zeros([4, 8, 8, 3]), tf.range(4)))
    with pytest.raises(ValueError, match="one-hot"):
        ds.batch(2).map(augment.mixup(0.2))
    with pytest.raises(ValueError, match="batched"):
        ds.map(augment.cutout(2))

"""keras_effcnn.data: loading the real datasets, tf.data pipelines, and clear input errors."""

from __future__ import annotations

import collections
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_effcnn import data
from keras_effcnn.data import DataFormatError, DataNotFoundError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist(data_dir):
    return data.load_arrays("mnist", data_dir, source="local")


@pytest.fixture(scope="module")
def cifar(data_dir):
    return data.load_arrays("cifar10", data_dir, source="local")


def _write_npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def _small_mnist(mnist, n=40) -> dict:
    (x, y), (xt, yt) = mnist
    return dict(x_train=x[:n, ..., 0], y_train=y[:n].astype(np.uint8),
                x_test=xt[:n, ..., 0], y_test=yt[:n].astype(np.uint8))


def _as_bytes_counter(images_01: np.ndarray) -> collections.Counter:
    """Multiset of images, recovered exactly as uint8 from [0, 1] floats."""
    as_uint8 = np.round(np.asarray(images_01) * 255).astype(np.uint8)
    return collections.Counter(im.tobytes() for im in as_uint8)


def _assert_raises(case: str, error: type[Exception], match: str, fn, *args, **kwargs) -> None:
    """Like pytest.raises, for one case of a table (one test per table keeps the suite fast)."""
    try:
        fn(*args, **kwargs)
    except error as e:
        assert re.search(match, str(e)), f"case {case}: message {str(e)!r} does not match {match!r}"
    else:
        pytest.fail(f"case {case}: no {error.__name__} raised")


def _collect(dataset):
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    return np.concatenate(xs), np.concatenate(ys)


# ----------------------------------------------------------------------------- metadata and arrays


def test_dataset_metadata():
    assert set(data.DATASETS) == {"mnist", "fashion_mnist", "cifar10"}
    assert data.DATASETS["cifar10"].label_names == (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert data.DATASETS["mnist"].label_names == tuple("0123456789")
    assert data.DATASETS["fashion_mnist"].label_names[9] == "Ankle boot"
    for name, spec in data.DATASETS.items():
        assert spec.filename == f"{name}.npz"
        assert len(spec.label_names) == spec.num_classes == 10
        assert len(spec.mean) == len(spec.std) == spec.input_shape[-1]


def test_mnist_arrays_match_the_official_release(mnist):
    (x, y), (xt, yt) = mnist
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert x.dtype == np.uint8 and y.dtype == np.int64 and y.shape == (60000,)
    assert np.bincount(y).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(yt).tolist() == MNIST_TEST_COUNTS
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert yt[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(x.max()) == 255 and int(x.min()) == 0


def test_cifar_arrays_match_the_official_release(cifar):
    (x, y), (xt, yt) = cifar
    assert x.shape == (50000, 32, 32, 3) and xt.shape == (10000, 32, 32, 3)
    assert x.dtype == np.uint8 and y.shape == (50000,)
    assert np.bincount(y).tolist() == [5000] * 10
    assert np.bincount(yt).tolist() == [1000] * 10
    assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert yt[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_channel_statistics_match_the_training_images(name, mnist, cifar):
    (x, _), _ = mnist if name == "mnist" else cifar
    spec = data.DATASETS[name]
    values = np.arange(256) / 255.0
    for c in range(x.shape[-1]):
        # An exact histogram avoids a float copy of the whole training set.
        hist = np.bincount(x[..., c].ravel(), minlength=256).astype(np.float64)
        mean = (hist * values).sum() / hist.sum()
        std = np.sqrt((hist * (values - mean) ** 2).sum() / hist.sum())
        assert spec.mean[c] == pytest.approx(mean, abs=1e-4)
        assert spec.std[c] == pytest.approx(std, abs=1e-4)


@pytest.mark.parametrize("name", ["effcnn_mnist", "effcnn_cifar10", "paper_mnist", "paper_cifar10"])
def test_every_zoo_model_normalises_with_its_datasets_statistics(name):
    """The zoo reads mean/std from the same dataset record as the data pipelines (no second table)."""
    from keras_effcnn import models

    spec = data.DATASETS[models.get_spec(name).dataset]
    layer = models.build(name).get_layer("normalize")
    np.testing.assert_allclose(np.ravel(layer.mean), spec.mean, rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.ravel(layer.variance)), spec.std, rtol=1e-6)


def test_arrays_are_cached_and_read_only(data_dir, mnist):
    again = data.load_arrays("mnist", data_dir, source="local")
    assert again[0][0] is mnist[0][0]
    with pytest.raises(ValueError, match="read-only"):
        again[0][0][0, 0, 0, 0] = 1


def test_env_var_names_the_local_folder(data_dir, mnist, monkeypatch):
    monkeypatch.setenv(data.ENV_DATA_DIR, str(data_dir))
    (x, _), _ = data.load_arrays("mnist", source="local")
    assert x is mnist[0][0]


def test_sha256_verification_warns_but_does_not_block(data_dir, mnist, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_arrays("mnist", data_dir, source="local", verify=True)
    _write_npz(tmp_path / "mnist.npz", **_small_mnist(mnist))
    with pytest.warns(UserWarning, match="sha256"):
        (x, y), _ = data.load_arrays("mnist", tmp_path, source="local", verify=True)
    assert x.shape == (40, 28, 28, 1) and np.array_equal(y, mnist[0][1][:40])


# ----------------------------------------------------------------------------- missing and damaged data


def test_missing_folder_raises_data_not_found(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match=data.ENV_DATA_DIR) as info:
        data.load_arrays("cifar10", missing, source="local")
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in str(info.value)


def test_missing_file_lists_what_is_there(tmp_path, mnist):
    _write_npz(tmp_path / "mnist.npz", **_small_mnist(mnist))
    with pytest.raises(DataNotFoundError, match=r"cifar10\.npz.*mnist\.npz"):
        data.load_arrays("cifar10", tmp_path, source="local")


def test_local_source_needs_a_folder(monkeypatch):
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    with pytest.raises(DataNotFoundError, match=data.ENV_DATA_DIR):
        data.load_arrays("mnist", source="local")


def test_env_var_to_missing_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "gone"))
    with pytest.raises(DataNotFoundError, match=r"\$KERAS_EFFCNN_DATA_DIR"):
        data.load_arrays("mnist", source="local")


def _offline(monkeypatch):
    def fail_tfds(name, *_):
        raise DataNotFoundError(f"{name} is not prepared (test: offline)")

    def fail_keras(name):
        raise DataNotFoundError(f"keras.datasets could not download {name} (test: offline)")

    monkeypatch.setattr(data.sources, "_from_tfds", fail_tfds)
    monkeypatch.setattr(data.sources, "_from_keras", fail_keras)


def test_auto_reports_every_source_in_one_error(tmp_path, monkeypatch):
    _offline(monkeypatch)
    with pytest.warns(UserWarning, match="trying to download"):
        with pytest.raises(DataNotFoundError) as info:
            data.load_arrays("mnist", tmp_path / "none")
    message = str(info.value)
    for part in ("- local:", "- tfds:", "- keras:", data.ENV_DATA_DIR, "internet", "mnist.npz"):
        assert part in message


def test_auto_without_folder_says_none_was_given(monkeypatch):
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    _offline(monkeypatch)
    with pytest.raises(DataNotFoundError, match="no data folder given"):
        data.load_arrays("fashion_mnist")


def test_auto_uses_the_local_file_first(data_dir, mnist, monkeypatch):
    _offline(monkeypatch)
    (x, _), _ = data.load_arrays("mnist", data_dir)
    assert x is mnist[0][0]


def test_auto_does_not_hide_a_damaged_local_file(tmp_path, monkeypatch):
    _offline(monkeypatch)
    (tmp_path / "mnist.npz").write_bytes(b"not an archive" * 100)
    with pytest.raises(DataFormatError, match="mnist.npz"):
        data.load_arrays("mnist", tmp_path)


def test_tfds_offline_fails_fast(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds  # an install requirement: no skip

    def no_download(*args, **kwargs):
        raise AssertionError("tfds download attempted: it would retry for minutes offline")

    probes = []
    monkeypatch.setattr(data.sources, "_online", lambda *a, **k: probes.append(a) or False)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    monkeypatch.delenv(data.ENV_TFDS_MANUAL_DIR, raising=False)
    with pytest.raises(DataNotFoundError, match="unreachable"):
        data.load_arrays("cifar10", source="tfds", tfds_data_dir=tmp_path)
    # Fast means: one connection probe, then the error, without entering tfds's download retries.
    assert probes == [tuple(data.DATASETS["cifar10"].download_host)]


def _garbage(path: Path, real: Path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _truncated(path: Path, real: Path):
    path.write_bytes(real.read_bytes()[: real.stat().st_size // 2])


def _flipped_bytes(path: Path, real: Path):
    raw = bytearray(real.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(64)
    path.write_bytes(bytes(raw))


def _single_npy(path: Path, real: Path):
    with open(path, "wb") as f:
        np.save(f, np.zeros((3, 28, 28), np.uint8))


def test_damaged_file_raises_format_error_naming_it(tmp_path, mnist):
    source = _write_npz(tmp_path / "src" / "mnist.npz", **_small_mnist(mnist, n=2000))
    cases = [("garbage", _garbage, "not an .npz archive"), ("truncated", _truncated, "truncated"),
             ("flipped", _flipped_bytes, "damaged .npz archive"),
             ("npy", _single_npy, "single .npy array")]
    for case, damage, match in cases:
        folder = tmp_path / case
        folder.mkdir()
        damage(folder / "mnist.npz", source)
        _assert_raises(case, DataFormatError, re.escape(str(folder / "mnist.npz")) + ".*" + re.escape(match),
                       data.load_arrays, "mnist", folder, source="local")


def test_missing_keys_are_listed(tmp_path, mnist):
    arrays = _small_mnist(mnist)
    arrays["labels"] = arrays.pop("y_test")
    _write_npz(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(DataFormatError, match=r"missing key\(s\) y_test; found .*labels"):
        data.load_arrays("mnist", tmp_path, source="local")


def test_wrong_content_raises_format_error(tmp_path, mnist):
    cases = [
        ("label-out-of-range", lambda a: a["y_train"].__setitem__(3, 10),
         r"labels must be in 0\.\.9.*10 at index 3"),
        ("wrong-size", lambda a: a.update(x_test=np.zeros((40, 32, 32, 3), np.uint8)), r"32x32 pixels"),
        ("float-pixels", lambda a: a.update(x_train=a["x_train"] / 255.0), r"must be uint8"),
        ("length-mismatch", lambda a: a.update(y_test=a["y_test"][:39]), r"40 images but 39 labels"),
    ]
    for case, change, match in cases:
        arrays = {k: v.copy() for k, v in _small_mnist(mnist).items()}
        change(arrays)
        path = _write_npz(tmp_path / case / "mnist.npz", **arrays)
        _assert_raises(case, DataFormatError, re.escape(str(path)) + ".*" + match,
                       data.load_arrays, "mnist", path.parent, source="local")


# ----------------------------------------------------------------------------- pipelines


def test_load_batches_are_scaled_one_hot_and_ordered(data_dir, mnist):
    (x, y), (xt, yt) = mnist
    splits = data.load("mnist", data_dir, batch_size=128, subset=1000, source="local")
    info = splits.info
    assert splits.val is None
    assert info.counts == {"train": 1000, "val": 0, "test": 10000}
    assert info.steps_per_epoch == 8 and info.input_shape == (28, 28, 1) and info.num_classes == 10
    assert int(splits.train.cardinality()) == 8 and int(splits.test.cardinality()) == 79
    images, labels = next(iter(splits.test))
    assert images.dtype == tf.float32 and images.shape == (128, 28, 28, 1)
    np.testing.assert_allclose(images.numpy(), xt[:128] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(labels.numpy(), np.eye(10, dtype=np.float32)[yt[:128]])
    train_x, train_y = _collect(splits.train)
    assert train_x.shape == (1000, 28, 28, 1) and train_x.min() >= 0 and train_x.max() <= 1
    assert _as_bytes_counter(train_x) == _as_bytes_counter(x[:1000] / 255.0)
    np.testing.assert_array_equal(np.bincount(train_y.argmax(1), minlength=10),
                                  np.bincount(y[:1000], minlength=10))


def test_train_reshuffles_each_pass_reproducibly_without_an_epoch(data_dir):
    # Without an EpochSetter (the epoch variable stays -1) each pass draws a new seeded key.
    def epochs(seed):
        ds = data.load("mnist", data_dir, batch_size=100, subset=300, seed=seed, one_hot=False,
                       source="local").train
        return [_collect(ds)[1] for _ in range(2)]

    first, second = epochs(0)
    assert first.dtype == np.int32 and first.shape == (300,)
    assert not np.array_equal(first, second)
    assert sorted(first) == sorted(second)
    again = epochs(0)
    np.testing.assert_array_equal(again[0], first)
    np.testing.assert_array_equal(again[1], second)
    assert not np.array_equal(epochs(1)[0], first)


def test_train_is_epoch_pure_and_follows_the_documented_formula(data_dir, mnist):
    from keras_effcnn import augment

    (x, y), _ = mnist
    seed, epoch = 4, 2

    def splits(seed=seed):
        return data.load("mnist", data_dir, batch_size=100, subset=300, seed=seed, one_hot=False, source="local",
                         augment=[augment.random_shift(2, seed=9), augment.cutout(6)])

    used = splits()
    for _ in range(3):  # iterators created (and read or not) before must not matter
        _collect(used.train)
        iter(used.train)
    used.epoch.assign(epoch)
    got = _collect(used.train)
    fresh = splits()
    fresh.epoch.assign(epoch)
    again = _collect(fresh.train)
    np.testing.assert_array_equal(got[0], again[0])
    np.testing.assert_array_equal(got[1], again[1])

    # The formula of docs/data.md, computed here from the raw arrays.
    order = tf.random.experimental.stateless_shuffle(tf.range(300, dtype=tf.int64), [seed, epoch]).numpy()
    shift, cut = augment.random_shift(2, seed=9), augment.cutout(6)
    def fold(seed, data):  # the pipeline's keys, epochs and batch indices are int64
        return tf.random.experimental.stateless_fold_in(tf.constant(seed, tf.int64), tf.constant(data, tf.int64))

    for b in range(3):
        idx = order[100 * b:100 * (b + 1)]
        images = tf.constant(x[idx].astype(np.float32) * np.float32(1 / 255))
        images, _ = shift.stateless(images, None, fold(fold([9, 0], epoch), b))
        images, _ = cut.stateless(images, None, fold(fold([seed, 1], epoch), b))  # seed None: the pipeline's
        np.testing.assert_array_equal(got[0][100 * b:100 * (b + 1)], images.numpy())
        np.testing.assert_array_equal(got[1][100 * b:100 * (b + 1)], y[idx])

    fresh.epoch.assign(epoch + 1)
    assert not np.array_equal(_collect(fresh.train)[1], got[1])
    other = splits(seed + 1)
    other.epoch.assign(epoch)
    assert not np.array_equal(_collect(other.train)[1], got[1])


def test_epoch_setter_tells_the_pipeline_the_epoch_in_fit(data_dir):
    import keras

    splits = data.load("mnist", data_dir, batch_size=64, subset=128, source="local")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(int(splits.epoch.numpy()))

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("sgd", keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=False)
    model.fit(splits.train, epochs=3, initial_epoch=1, verbose=0, shuffle=False,
              callbacks=[splits.epoch_callback(), Record()])
    assert seen == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="`epoch`"):
        data.EpochSetter(tf.Variable(0.0))
    setter = data.EpochSetter()
    assert setter.epoch.dtype == tf.int64 and int(setter.epoch.numpy()) == -1


def test_train_ordered_is_the_plain_training_split(data_dir, mnist):
    from keras_effcnn import augment

    (x, y), _ = mnist
    splits = data.load("mnist", data_dir, batch_size=128, subset=1000, validation_split=0.2, source="local",
                       augment=[augment.cutout(8, seed=0)])
    images, labels = _collect(splits.train_ordered)
    assert images.shape == (800, 28, 28, 1) and int(splits.train_ordered.cardinality()) == 7
    # In stored order and unaugmented: the first 1000 images minus the validation ones.
    expected = np.setdiff1d(np.arange(1000), data.pipelines._validation_indices(y[:1000], 0.2, 0, True))
    np.testing.assert_allclose(images, x[expected] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(labels.argmax(1), y[expected])


def test_validation_split_is_disjoint_stratified_and_seeded(data_dir, mnist):
    (x, y), _ = mnist
    splits = data.load("mnist", data_dir, batch_size=256, subset=2000, validation_split=0.25,
                       seed=3, source="local")
    assert splits.info.counts == {"train": 1500, "val": 500, "test": 10000}
    val_x, val_y = _collect(splits.val)
    train_x, _ = _collect(splits.train)
    # Together they are exactly the first 2000 training images, so they cannot overlap.
    assert _as_bytes_counter(train_x) + _as_bytes_counter(val_x) == _as_bytes_counter(x[:2000] / 255.0)
    val_counts = np.bincount(val_y.argmax(1), minlength=10)
    np.testing.assert_allclose(val_counts, np.bincount(y[:2000], minlength=10) * 0.25, atol=1)
    same = _collect(data.load("mnist", data_dir, batch_size=256, subset=2000, validation_split=0.25,
                              seed=3, source="local").val)[0]
    other = _collect(data.load("mnist", data_dir, batch_size=256, subset=2000, validation_split=0.25,
                               seed=4, source="local").val)[0]
    np.testing.assert_array_equal(same, val_x)
    assert not np.array_equal(other, val_x)
    # The validation pipeline keeps the original order of the images it holds.
    val_uint8 = np.round(val_x * 255).astype(np.uint8)
    index = {im.tobytes(): i for i, im in enumerate(x[:2000])}
    positions = [index[im.tobytes()] for im in val_uint8]
    assert positions == sorted(positions)


def test_unstratified_split_has_the_requested_size(data_dir):
    splits = data.load("mnist", data_dir, subset=999, validation_split=0.1, stratify=False,
                       source="local")
    assert splits.info.counts["val"] == 100 and splits.info.counts["train"] == 899


def test_augment_runs_on_batched_train_only(data_dir):
    seen = []

    def blackout(images, labels):
        seen.append((images.dtype, tuple(images.shape.as_list()), tuple(labels.shape.as_list())))
        return tf.zeros_like(images), labels

    splits = data.load("mnist", data_dir, batch_size=64, subset=256, validation_split=0.25,
                       augment=[blackout], source="local")
    assert seen == [(tf.float32, (None, 28, 28, 1), (None, 10))]
    assert float(tf.reduce_max(next(iter(splits.train))[0])) == 0.0
    assert float(tf.reduce_max(next(iter(splits.val))[0])) > 0.0
    assert float(tf.reduce_max(next(iter(splits.test))[0])) > 0.0


def test_pipeline_options_disable_autotune(data_dir):
    splits = data.load("mnist", data_dir, subset=128, source="local")
    for ds in (splits.train, splits.test):
        options = ds.options()
        assert options.autotune.enabled is False
        assert 1 <= options.threading.private_threadpool_size <= 4
        assert options.deterministic is True


def test_cifar_pipeline(data_dir, cifar):
    (x, _), _ = cifar
    splits = data.load("cifar10", data_dir, batch_size=32, subset=64, source="local")
    assert splits.info.label_names[0] == "airplane" and splits.info.mean == data.DATASETS["cifar10"].mean
    images, labels = next(iter(splits.train))
    assert images.shape == (32, 32, 32, 3) and labels.shape == (32, 10)
    assert _as_bytes_counter(_collect(splits.train)[0]) == _as_bytes_counter(x[:64] / 255.0)


def test_as_dataset_matches_load(data_dir, mnist):
    (x, y), _ = mnist
    from_user = _collect(data.as_dataset(x[:300, ..., 0], y[:300], num_classes=10, batch_size=128))
    assert from_user[0].shape == (300, 28, 28, 1)
    np.testing.assert_allclose(from_user[0], x[:300] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(from_user[1], np.eye(10, dtype=np.float32)[y[:300]])
    soft = np.full((300, 10), 0.1, np.float32)
    floats = _collect(data.as_dataset(x[:300] / 255.0, soft, num_classes=10, shuffle=True))
    np.testing.assert_array_equal(floats[1], soft)
    with pytest.raises(ValueError, match="one_hot=False"):
        data.as_dataset(x[:300], soft, num_classes=10, one_hot=False)


def test_representative_images_are_real_training_images(data_dir, mnist):
    (x, _), _ = mnist
    images = data.representative_images("mnist", data_dir, n=50, seed=1, source="local")
    assert images.shape == (50, 28, 28, 1) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    index = {im.tobytes(): i for i, im in enumerate(x)}
    found = [index.get(im.tobytes()) for im in np.round(images * 255).astype(np.uint8)]
    assert None not in found and len(set(found)) == 50
    np.testing.assert_array_equal(
        images, data.representative_images("mnist", data_dir, n=50, seed=1, source="local"))
    assert not np.array_equal(
        images, data.representative_images("mnist", data_dir, n=50, seed=2, source="local"))


def test_load_rejects_bad_arguments(data_dir):
    cases = [
        (dict(name="svhn"), "`name`"),
        (dict(source="web"), "`source`"),
        (dict(batch_size=0), "`batch_size`"),
        (dict(validation_split=1.0), "`validation_split`"),
        (dict(subset=0), "`subset`"),
        (dict(subset=70000), "`subset`"),
        (dict(subset=10, validation_split=0.01), "`validation_split`"),
        (dict(augment=[3]), "`augment`"),
        (dict(shuffle_buffer=0), "`shuffle_buffer`"),
    ]
    for kwargs, match in cases:
        call = {"name": "mnist", "data_dir": data_dir, "source": "local", **kwargs}
        _assert_raises(str(kwargs), ValueError, match, lambda: data.load(**call))
    with pytest.warns(DeprecationWarning, match="shuffle_buffer"):
        data.load("mnist", data_dir, subset=100, shuffle_buffer=50, source="local")


def test_representative_images_rejects_too_many(data_dir):
    with pytest.raises(ValueError, match="`n`"):
        data.representative_images("mnist", data_dir, n=60001, source="local")


# ----------------------------------------------------------------------------- validate_arrays


def _images(n=4, shape=(8, 8, 3), dtype=np.uint8):
    return np.zeros((n, *shape), dtype)


VALIDATE_CASES = [
    ("empty", _images(0), np.zeros(0, int), "empty"),
    ("length", _images(4), np.zeros(3, int), "4 images but 3 labels"),
    ("size", _images(4, (9, 8, 3)), np.zeros(4, int), r"9x8 pixels but 8x8"),
    ("channels", _images(4, (8, 8, 1)), np.zeros(4, int), r"1 channel\(s\) but 3"),
    ("rank", _images(4, (8, 8)), np.zeros(4, int), r"\(N, height, width, channels\)"),
    ("nan", np.full((4, 8, 8, 3), np.nan, np.float32), np.zeros(4, int), "non-finite"),
    ("float-range", np.full((4, 8, 8, 3), 255.0, np.float32), np.zeros(4, int), r"\[0, 1\].*divide"),
    ("int-range", np.full((4, 8, 8, 3), 300, np.int32), np.zeros(4, int), r"0\.\.255"),
    ("dtype", _images(4, dtype=bool), np.zeros(4, int), "dtype bool"),
    ("label-high", _images(4), np.array([0, 1, 5, 2]), r"0\.\.4.*5 at index 2"),
    ("label-negative", _images(4), np.array([0, -1, 1, 2]), r"0\.\.4.*-1 at index 1"),
    ("label-shape", _images(4), np.zeros((4, 2, 2), int), r"shape \(4, 2, 2\)"),
    ("onehot-columns", _images(4), np.zeros((4, 3)), "3 columns but there are 5 classes"),
    ("onehot-sum", _images(4), np.full((4, 5), 0.5), "sum to 1"),
    ("label-fraction", _images(4), np.array([0.0, 1.5, 2.0, 3.0]), "non-integer"),
    ("label-dtype", _images(4), np.array(["a", "b", "c", "d"]), "integer class indices"),
]


def test_validate_arrays_raises_one_clear_error_each():
    for case, x, y, match in VALIDATE_CASES:
        _assert_raises(case, ValueError, match, data.validate_arrays, x, y,
                       input_shape=(8, 8, 3), num_classes=5)


def test_validate_arrays_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`input_shape`"):
        data.validate_arrays(_images(), np.zeros(4, int), input_shape=(8, 8), num_classes=5)
    with pytest.raises(ValueError, match="`num_classes`"):
        data.validate_arrays(_images(), np.zeros(4, int), input_shape=(8, 8, 3), num_classes=0)


def test_validate_arrays_accepts_the_usual_forms():
    ok = dict(input_shape=(8, 8, 1), num_classes=3)
    data.validate_arrays(np.zeros((2, 8, 8), np.uint8), np.array([0, 2]), **ok)
    data.validate_arrays(np.ones((2, 8, 8, 1), np.float32), np.array([[1], [2]]), **ok)
    data.validate_arrays(np.zeros((2, 8, 8, 1), np.int64), np.eye(3)[[0, 1]], **ok)
    data.validate_arrays(np.zeros((2, 8, 8, 1)), np.array([1.0, 2.0]), **ok)


# ----------------------------------------------------------------------------- tensorflow-datasets


@pytest.mark.slow
def test_tfds_mnist_from_manual_dir_equals_local_file(data_dir, mnist, tmp_path):
    """tfds's own MNIST builder, prepared offline from the original idx files (about 30 s)."""
    manual = data_dir / "mnist-idx"
    if not manual.is_dir():  # the only skip: a data folder without the idx files (CI's ../shared/data has them)
        pytest.skip(f"{manual} not present")
    work = tmp_path / "tfds"
    try:  # a DataNotFoundError here is a broken loader: it fails the test
        (x, y), (xt, yt) = data.load_arrays("mnist", source="tfds", tfds_data_dir=work,
                                            tfds_manual_dir=manual)
    finally:
        data.clear_cache()
    (lx, ly), (lxt, lyt) = mnist
    assert x.shape == lx.shape and xt.shape == lxt.shape and x.dtype == np.uint8
    # tfds stores its own shuffled order, so compare (image, label) multisets.
    for a, b in (((x, y), (lx, ly)), ((xt, yt), (lxt, lyt))):
        pairs = collections.Counter(im.tobytes() + bytes([lab]) for im, lab in zip(*a))
        assert pairs == collections.Counter(im.tobytes() + bytes([lab]) for im, lab in zip(*b))
    shutil.rmtree(work, ignore_errors=True)

"""Flip test-time augmentation against a NumPy reference."""

import keras
import numpy as np
import pytest

from keras_effcnn import test_time

pytestmark = pytest.mark.backend_neutral


def _linear_model(rng):
    model = keras.Sequential([keras.Input((4, 5, 2)), keras.layers.Flatten(), keras.layers.Dense(3)])
    kernel = rng.normal(size=(40, 3)).astype("float32")
    bias = rng.normal(size=(3,)).astype("float32")
    model.layers[-1].set_weights([kernel, bias])
    return model, kernel, bias


def test_mean_of_plain_and_mirrored_outputs_matches_numpy():
    rng = np.random.default_rng(0)
    model, kernel, bias = _linear_model(rng)
    x = rng.normal(size=(7, 4, 5, 2)).astype("float32")
    mirrored = x[:, :, ::-1, :]  # width is axis 2 in channels-last images
    expected = ((x.reshape(7, -1) @ kernel + bias) + (mirrored.reshape(7, -1) @ kernel + bias)) / 2
    got = test_time.predict_with_flips(model, x, batch_size=3)  # ragged last batch
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_accuracy_takes_integer_and_one_hot_labels():
    rng = np.random.default_rng(1)
    model, kernel, bias = _linear_model(rng)
    x = rng.normal(size=(50, 4, 5, 2)).astype("float32")
    logits = ((x.reshape(50, -1) + x[:, :, ::-1, :].reshape(50, -1)) @ kernel) / 2 + bias
    labels = rng.integers(0, 3, size=50)
    expected = np.mean(logits.argmax(1) == labels)
    assert 0 < expected < 1
    assert test_time.accuracy_with_flips(model, x, labels) == pytest.approx(expected)
    assert test_time.accuracy_with_flips(model, x, np.eye(3)[labels]) == pytest.approx(expected)
    assert test_time.accuracy_with_flips(model, x, labels[:, None]) == pytest.approx(expected)


def test_mirror_symmetric_images_give_the_plain_prediction():
    rng = np.random.default_rng(2)
    model, _, _ = _linear_model(rng)
    half = rng.normal(size=(4, 4, 3, 2)).astype("float32")
    symmetric = np.concatenate([half[:, :, :2], half[:, :, 2:], half[:, :, 1::-1]], axis=2)
    assert symmetric.shape == (4, 4, 5, 2)
    np.testing.assert_allclose(test_time.predict_with_flips(model, symmetric),
                               model.predict(symmetric, verbose=0), rtol=1e-5, atol=1e-5)


def test_bad_input_is_named():
    model, _, _ = _linear_model(np.random.default_rng(3))
    with pytest.raises(ValueError, match="images must be"):
        test_time.predict_with_flips(model, np.zeros((4, 5, 2)))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        test_time.accuracy_with_flips(model, np.zeros((3, 4, 5, 2)), [0, 1])

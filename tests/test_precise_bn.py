"""PreciseBN: after the last epoch the BatchNorm statistics are the exact statistics of the data (NumPy)."""

import keras
import numpy as np
import pytest

from keras_effcnn import recipes
from keras_effcnn.callbacks import PreciseBN

pytestmark = pytest.mark.backend_neutral


def _model():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(inputs)  # sees the raw images
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


@pytest.mark.parametrize("precise", [False, True])
def test_last_epoch_leaves_the_exact_statistics_of_the_data(precise):
    rng = np.random.default_rng(0)
    # Channels on different scales and a drift between samples, so the moving averages of a few
    # batches are visibly off the statistics of the whole set.
    x = (rng.normal(size=(50, 4, 4, 3)) * [1.0, 3.0, 0.5] + np.linspace(0, 4, 50)[:, None, None, None])
    x = x.astype("float32")
    y = rng.normal(size=(50, 2)).astype("float32")
    model = _model()
    callback = PreciseBN(_batches(x, y, 16))  # 16 + 16 + 16 + 2: a ragged last batch
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[callback] if precise else [])
    bn = model.get_layer("bn")
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # pooled over samples and positions
    got_mean, got_var = (keras.ops.convert_to_numpy(v) for v in (bn.moving_mean, bn.moving_variance))
    if precise:
        assert callback.batches_used == 4
        np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_var, var, rtol=1e-4, atol=1e-5)
    else:  # the moving averages of plain training are not those statistics
        assert np.abs(got_mean - mean).max() > 0.1


def test_only_the_last_epoch_recomputes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4, 4, 3)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    callback = PreciseBN(_batches(x, y, 8), steps=2)
    model = _model()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert callback.batches_used == 2  # the steps cap
    with pytest.raises(ValueError, match="steps must be >= 1"):
        PreciseBN([], steps=0)


def test_recipe_field_adds_the_callback_and_needs_data():
    recipe = recipes.get_recipe("mnist_1500_fast").replace(precise_bn=True)
    (callback,) = recipes.technique_callbacks(recipe, epochs=3, bn_data=[])
    assert isinstance(callback, PreciseBN)
    with pytest.raises(ValueError, match="precise_bn needs bn_data"):
        list(recipes.technique_callbacks(recipe, epochs=3, bn_data=None))
    assert list(recipes.technique_callbacks(recipes.get_recipe("mnist_1500"), epochs=3, bn_data=[])) == []
    assert recipes.Recipe.from_json(recipe.to_json()).precise_bn is True

"""Every zoo model and every recipe's model round-trips through ``.keras`` in safe mode.

``keras.saving.load_model(path, safe_mode=True)`` refuses to deserialize Python
code (``Lambda`` layers, lambdas in configs), so a model that loads this way can
be shared as a file without trusting its author. The loaded model must compute
exactly what the saved one did, and nothing in its config may be a ``Lambda``.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest


def _class_names(config) -> list[str]:
    """Every ``class_name`` anywhere in a saved Keras config."""
    found = []
    if isinstance(config, dict):
        if isinstance(config.get("class_name"), str):
            found.append(config["class_name"])
        for value in config.values():
            found += _class_names(value)
    elif isinstance(config, list):
        for value in config:
            found += _class_names(value)
    return found


def _round_trip(model, path, compile: bool):
    import keras

    model.save(path)
    with zipfile.ZipFile(path) as archive:
        names = _class_names(json.loads(archive.read("config.json")))
    assert "Lambda" not in names, f"{model.name} contains a Lambda layer"
    assert all(not n.startswith("keras_effcnn") or ">" in n for n in names)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=compile)
    # Shape (2, H, W, C) real-valued [0, 1] inputs; inference mode on both sides.
    x = np.random.default_rng(0).random((2,) + tuple(model.input_shape[1:]), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), np.asarray(loaded(x, training=False)))
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]
    return loaded, names


@pytest.mark.parametrize("name", ["effcnn_cifar10", "effcnn_mnist", "paper_cifar10", "paper_mnist"])
def test_every_zoo_model_loads_in_safe_mode(name, tmp_path):
    from keras_effcnn import models

    assert name in models.list_models()
    model = models.build(name)
    _round_trip(model, tmp_path / f"{name}.keras", compile=False)


def test_the_zoo_list_is_covered():
    from keras_effcnn import models

    assert sorted(models.list_models()) == ["effcnn_cifar10", "effcnn_mnist", "paper_cifar10", "paper_mnist"]


def _saved_form(recipe) -> tuple:
    """The recipe fields that change what a ``.keras`` file holds (layers, wrapper, optimizer, schedule, loss).

    Mixup, Cutout, crops, SWA and precise BN act on the data or through callbacks, and
    numbers (epochs, rates) are values in the same configs: recipes that differ only
    there save through the same code.
    """
    return (recipe.dataset, recipe.model, json.dumps(recipe.model_options, sort_keys=True), recipe.optimizer,
            recipe.schedule, tuple(sorted(recipe.schedule_options)), recipe.sam_rho > 0, recipe.sam_adaptive,
            recipe.teacher is not None, recipe.label_smoothing > 0)


def test_every_recipe_model_loads_compiled_in_safe_mode(tmp_path):
    import keras

    from keras_effcnn import recipes

    # One recipe of each saved form (17 of the 25 registered recipes in December 2026).
    forms = {}
    for name in recipes.list_recipes():
        forms.setdefault(_saved_form(recipes.get_recipe(name)), name)
    assert len(forms) >= 16
    for name in forms.values():
        model = recipes.build(name)
        model.optimizer.build(model.trainable_variables)  # saved with its slots, as after training
        loaded, _ = _round_trip(model, tmp_path / f"{name}.keras", compile=True)
        assert len(loaded.optimizer.variables) == len(model.optimizer.variables), name
        for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{name}: {b.path}")
        assert type(loaded) is type(model), name  # e.g. SAMModel stays SAMModel
        # The optimizer (with its learning-rate schedule) and the loss come back too.
        saved_opt = keras.saving.serialize_keras_object(model.optimizer)["config"]
        loaded_opt = keras.saving.serialize_keras_object(loaded.optimizer)["config"]
        assert loaded_opt == saved_opt, name
        assert loaded.loss.get_config() == model.loss.get_config(), name
        keras.backend.clear_session()

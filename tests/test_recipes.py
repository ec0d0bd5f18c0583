"""Recipes: plain-data configs that build compiled models and train on real data."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_effcnn import models, recipes
from keras_effcnn.recipes import Recipe


def test_headline_recipes_respect_their_budgets():
    assert models.count_params(recipes.mnist_1500())["trainable"] <= 1_500
    assert models.count_params(recipes.cifar10_140k())["trainable"] <= 140_000


def test_json_round_trip(tmp_path):
    recipe = recipes.get_recipe("cifar10_140k").replace(seed=3, mixup_alpha=0.4)
    path = tmp_path / "r.json"
    recipe.to_json(path)
    assert Recipe.from_json(path) == recipe
    assert recipes.resolve(str(path)) == recipe
    assert json.loads(path.read_text())["mixup_alpha"] == 0.4


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("batch_size", 0), ("optimizer", "lion"), ("schedule", "cosine-ish"), ("learning_rate", -1.0),
     ("label_smoothing", 1.0), ("mixup_alpha", -0.1), ("cutout_length", -2), ("swa_start", 1.0), ("sam_rho", -0.05),
     ("validation_split", 1.0), ("dataset", "imagenet"), ("model", "nope")],
)
def test_bad_hyperparameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        recipes.get_recipe("mnist_1500").replace(**{field: value})


def test_unknown_fields_and_names():
    with pytest.raises(ValueError, match="unknown recipe fields"):
        Recipe.from_dict({**recipes.get_recipe("mnist_1500").to_dict(), "warp_drive": True})
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.get_recipe("mnist_9000")


def test_schedule_spans_the_requested_epochs():
    recipe = recipes.get_recipe("mnist_1500")
    model = recipes.build(recipe)
    steps = recipe.steps_per_epoch()
    assert steps == int(np.ceil(60_000 / recipe.batch_size))
    schedule = model.optimizer.learning_rate_schedule if hasattr(model.optimizer, "learning_rate_schedule") else None
    schedule = schedule or model.optimizer._learning_rate
    # One-cycle peaks at max_lr after pct_start of the run and ends far below it.
    assert float(schedule(0)) < recipe.learning_rate / 10
    assert float(schedule(steps * recipe.epochs)) < recipe.learning_rate / 100
    peak = max(float(schedule(s)) for s in range(0, steps * recipe.epochs, steps // 4))
    assert peak == pytest.approx(recipe.learning_rate, rel=0.02)


def test_recipe_learns_on_real_mnist(data_dir):
    """A few hundred steps of the headline recipe clearly learn (held-out slice of train)."""
    recipe = recipes.get_recipe("mnist_1500").replace(epochs=3, batch_size=64, validation_split=0.05)
    model = recipes.build(recipe)
    result = recipes.fit(model, data_dir, subset=12_000, verbose=0)
    assert len(result.history["loss"]) == 3
    assert result.history["val_accuracy"][-1] > 0.90
    assert result.test_accuracy > 0.90
    assert result.params["trainable"] == 1_494


def test_input_shape_mismatch_is_caught_before_training(data_dir):
    recipe = recipes.get_recipe("mnist_1500").replace(epochs=1)
    model = recipes.build(recipe)
    wrong = recipe.replace(dataset="cifar10")
    with pytest.raises(ValueError, match="expects"):
        recipes.fit(model, data_dir, recipe=wrong, subset=256, verbose=0)


def test_fit_with_out_resumes_an_swa_run_exactly(data_dir, tmp_path):
    """Interrupted in its last epoch, resumed: the SWA average, its BatchNorm pass and the history match."""
    from keras_effcnn.callbacks import SWA

    # 3 epochs of 4 batches; SWA averages epochs 1-3 and recomputes BatchNorm on train_ordered.
    recipe = recipes.get_recipe("mnist_phase9_swa").replace(epochs=3, batch_size=64, swa_start=0.3)

    class StopAt(keras.callbacks.Callback):
        def __init__(self, step):
            super().__init__()
            self.step, self.seen = step, 0

        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            if self.seen == self.step:
                raise KeyboardInterrupt

    def run(out, *callbacks):
        model = recipes.build(recipe)
        result = recipes.fit(model, data_dir, subset=256, verbose=0, evaluate_test=False, out=out,
                             save_every_steps=5, callbacks=callbacks)
        return model, result

    ref_model, ref = run(tmp_path / "ref")
    assert ref.resumed_from is None and len(ref.history["loss"]) == 3
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", StopAt(10))  # epoch 3, batch 2; last checkpoint: end of epoch 2 (step 8)
    model, result = run(tmp_path / "run")
    assert result.resumed_from.endswith("ckpt-e000002-b0000000.npz")
    assert result.history == ref.history  # epochs 1-2 come from the checkpoint
    for a, b in zip(ref_model.variables, model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # The SWA callback got the unshuffled, unaugmented training split for its BatchNorm pass.
    swa = next(recipes.technique_callbacks(recipe, 3, bn_data="fixed pass"))
    assert isinstance(swa, SWA) and swa.bn_data == "fixed pass" and swa.start_epoch == 0

"""Every recipe field reaches the model or pipeline it describes.

``test_recipes.py`` checks that recipes build, validate and round-trip; this file
checks that each training choice *takes effect*, by observing behaviour (values
the built model, its optimizer, loss, augmentations and callbacks produce) and
comparing it with a formula, never by reading the attribute the code just set:

* ``sam_rho`` / ``sam_adaptive``: the built model is a ``SAMModel`` with that
  radius and mode (and a plain model when ``sam_rho == 0``);
* ``weight_decay``: one optimizer step with zero gradients shrinks every kernel
  by ``lr * wd`` and leaves BatchNorm ``gamma``/``beta`` and biases untouched;
* ``momentum`` (Nesterov SGD): one step with unit gradients moves an undecayed
  variable by ``-lr * (1 + momentum)``;
* ``learning_rate`` / ``schedule`` / ``epochs``: the optimizer's rate over the
  run peaks at ``learning_rate`` and one-cycle bottoms out at the run's last step;
* ``label_smoothing``: the compiled loss on known logits equals the NumPy
  smoothed cross-entropy;
* ``crop_padding`` / ``flip`` / ``cutout_length`` / ``mixup_alpha``: the
  functions of ``recipes.augmentations`` shift, mirror, cut and mix a crafted
  batch exactly as far as the field says;
* ``swa_start``: the SWA callback of ``recipes.technique_callbacks`` averages
  exactly the epochs from ``floor(swa_start * epochs)`` on;
* ``batch_size`` / ``epochs``: ``recipes.fit`` runs that many batches and epochs.

Each test runs over every registered recipe where its field is set (and, for
the switches, checks the recipes where it is off stay plain).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_effcnn import data, recipes
from keras_effcnn.sam import SAMModel

NAMES = recipes.list_recipes()
_BUILT: dict[str, keras.Model] = {}


def _recipe(name: str) -> recipes.Recipe:
    return recipes.get_recipe(name)


def _model(name: str) -> keras.Model:
    """The built recipe, shared by this module's tests (none depends on its weights)."""
    if name not in _BUILT:
        _BUILT[name] = recipes.build(name)
    return _BUILT[name]


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _BUILT.clear()


def _where(predicate) -> list[str]:
    return [n for n in NAMES if predicate(_recipe(n))]


def _fresh_optimizer(model: keras.Model) -> keras.optimizers.Optimizer:
    """The model's compiled optimizer, built for its variables, with zero state (step 0)."""
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    for v in optimizer.variables:
        if v.name != "learning_rate":  # a constant rate is stored as an optimizer variable
            v.assign(np.zeros(v.shape, v.dtype))
    return optimizer


def _is_bn_or_bias(variable) -> bool:
    return variable.path.rsplit("/", 1)[-1] in ("gamma", "beta", "bias")


def _step(model, gradient: float) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """One optimizer step with a constant gradient; (before, after, learning rate used)."""
    optimizer = _fresh_optimizer(model)
    variables = model.trainable_variables
    before = [np.array(v.numpy(), np.float64) for v in variables]
    lr = float(optimizer.learning_rate)  # the rate of step 0, the one applied next
    optimizer.apply_gradients([(keras.ops.full(v.shape, gradient, v.dtype), v) for v in variables])
    after = [np.array(v.numpy(), np.float64) for v in variables]
    return before, after, lr


# ----------------------------------------------------------------------------- SAM


@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_builds_a_compiled_model_carrying_its_plan(name):
    model = _model(name)  # built once here and shared by the tests below
    assert model.compiled, name
    assert model.training_plan == _recipe(name)


@pytest.mark.parametrize("name", NAMES)
def test_sam_rho_wraps_the_model_in_sam(name):
    recipe, model = _recipe(name), _model(name)
    if recipe.sam_rho > 0:
        assert isinstance(model, SAMModel), f"{name}: sam_rho={recipe.sam_rho} but {type(model).__name__}"
        config = model.get_config()
        assert (config["rho"], config["adaptive"]) == (recipe.sam_rho, recipe.sam_adaptive)
    else:
        assert not isinstance(model, SAMModel), f"{name}: sam_rho=0 must train plainly"


def test_sam_rho_and_adaptive_reach_the_model_after_a_plain_recipe():
    """Non-default rho / adaptive reach the model, also in a process that built a plain recipe first.

    (The registered SAM recipe uses rho = 0.05, which is also ``SAMModel``'s default, so a
    dropped ``rho`` would go unseen there; Keras rewrites a functional subclass's bases the
    first time one is built, so the order of builds matters.)
    """
    plain = _model(_where(lambda r: r.sam_rho == 0)[0])
    assert not isinstance(plain, SAMModel)
    name = _where(lambda r: r.sam_rho > 0)[0]
    model = recipes.build(_recipe(name).replace(sam_rho=0.5, sam_adaptive=True))
    assert isinstance(model, SAMModel)
    assert (model.get_config()["rho"], model.get_config()["adaptive"]) == (0.5, True)


# ----------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_shrinks_kernels_but_not_batchnorm_or_biases(name):
    recipe, model = _recipe(name), _model(name)
    before, after, lr = _step(model, 0.0)
    # Zero gradients: momentum buffers stay 0, so the only change is the decay.
    for v, b, a in zip(model.trainable_variables, before, after):
        if recipe.weight_decay == 0 or _is_bn_or_bias(v):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: {v.path} must not be decayed")
        else:
            # after = before * (1 - lr * wd), checked on the sum so float32 rounding averages out.
            shrink = np.sum((b - a) * b) / np.sum(b * b)
            assert shrink == pytest.approx(lr * recipe.weight_decay, rel=0.02), f"{name}: {v.path}"
    assert any(_is_bn_or_bias(v) for v in model.trainable_variables)  # the exclusion was exercised


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_honours_weight_decay(optimizer):
    """``weight_decay`` is documented for every optimizer; none may drop it silently."""
    name = _where(lambda r: r.weight_decay > 0)[0]
    recipe = _recipe(name).replace(optimizer=optimizer)
    model = recipes.build(recipe)
    before, after, lr = _step(model, 0.0)
    decayed = [not np.array_equal(a, b) for b, a in zip(before, after)]
    expected = [not _is_bn_or_bias(v) for v in model.trainable_variables]
    assert decayed == expected, f"{optimizer}: decayed variables differ from kernels-only"


@pytest.mark.parametrize("name", _where(lambda r: r.optimizer == "sgd"))
def test_sgd_uses_nesterov_momentum(name):
    recipe, model = _recipe(name), _model(name)
    before, after, lr = _step(model, 1.0)
    # Nesterov SGD from zero velocity: v = -lr*g; w += momentum*v - lr*g = -lr*g*(1 + momentum).
    expected = -lr * (1 + recipe.momentum)
    for v, b, a in zip(model.trainable_variables, before, after):
        if _is_bn_or_bias(v):  # undecayed, so the step is momentum alone
            np.testing.assert_allclose(a - b, expected, rtol=1e-4, err_msg=f"{name}: {v.path}")


# ----------------------------------------------------------------------------- schedule


def _rates(model, steps) -> np.ndarray:
    optimizer = _fresh_optimizer(model)
    rates = []
    for s in steps:
        optimizer.iterations.assign(int(s))
        rates.append(float(optimizer.learning_rate))
    optimizer.iterations.assign(0)
    return np.array(rates)


@pytest.mark.parametrize("name", NAMES)
def test_schedule_peaks_at_the_learning_rate_over_the_whole_run(name):
    recipe, model = _recipe(name), _model(name)
    total = recipe.steps_per_epoch() * recipe.epochs
    assert recipe.steps_per_epoch() == math.ceil(data.DATASETS[recipe.dataset].train_size / recipe.batch_size)
    steps = np.linspace(0, total, 201).round().astype(int)
    rates = _rates(model, steps)
    assert rates.max() == pytest.approx(recipe.learning_rate, rel=0.01), name
    if recipe.schedule == "constant":
        np.testing.assert_allclose(rates, recipe.learning_rate, rtol=1e-6)
    elif recipe.schedule == "onecycle":
        # Warm-up from far below the peak, annealing that ends at the run's last step, not before.
        assert rates[0] < recipe.learning_rate / 10
        assert rates[-1] < recipe.learning_rate / 100
        assert rates[-1] == rates.min()
        assert rates[int(0.95 * (len(steps) - 1))] > 2 * rates[-1], "the schedule ended before the run"
    elif recipe.schedule == "cyclic":  # repeated rises and falls between the base and the peak
        assert rates.min() < recipe.learning_rate / 2
        assert np.sum(np.diff(np.sign(np.diff(rates))) != 0) >= 2
    else:
        pytest.fail(f"{name}: no wiring check for schedule {recipe.schedule!r} yet; add one here")


# ----------------------------------------------------------------------------- loss


def _smoothed_cross_entropy(logits: np.ndarray, classes: np.ndarray, eps: float) -> float:
    k = logits.shape[1]
    target = (1 - eps) * np.eye(k)[classes] + eps / k
    z = logits - logits.max(axis=1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(np.mean(-(target * log_softmax).sum(axis=1)))


@pytest.fixture(scope="module")
def pipeline_labels(data_dir):
    """Labels as the recipe's training pipeline delivers them to the loss (first 32 test images)."""
    out = {}
    for dataset in sorted({_recipe(n).dataset for n in NAMES}):
        splits = data.load(dataset, data_dir, batch_size=32, subset=64)
        _, labels = next(iter(splits.test))
        out[dataset] = np.asarray(labels)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_compiled_loss_applies_the_label_smoothing(name, pipeline_labels):
    recipe, model = _recipe(name), _model(name)
    labels = pipeline_labels[recipe.dataset]
    classes = labels.argmax(axis=1) if labels.ndim == 2 else labels.astype(int)
    logits = np.random.default_rng(0).normal(0, 3, (len(classes), recipe.num_classes)).astype("float32")
    loss = float(model.compute_loss(y=keras.ops.convert_to_tensor(labels), y_pred=keras.ops.convert_to_tensor(logits)))
    expected = _smoothed_cross_entropy(logits, classes, recipe.label_smoothing)
    assert loss == pytest.approx(expected, rel=1e-5), f"{name}: label_smoothing={recipe.label_smoothing}"
    if recipe.label_smoothing:  # and the smoothing is visible at all on these logits
        assert abs(_smoothed_cross_entropy(logits, classes, 0.0) - expected) > 1e-2


def test_compiled_loss_smooths_mixups_soft_targets():
    """Mixup and label smoothing together: the recipe's loss smooths the mixed (soft) target."""
    recipe = _recipe(_where(lambda r: r.mixup_alpha)[0]).replace(label_smoothing=0.1)
    model = recipes.build(recipe)
    (mix,) = _only(recipe, mixup_alpha=recipe.mixup_alpha)
    h, w, c = _shape(recipe)
    images = np.random.default_rng(1).random((10, h, w, c), dtype=np.float32)
    _, mixed = _apply([mix], images, np.eye(10, dtype=np.float32))
    assert (mixed.max(axis=1) < 1).any(), "the batch was not mixed"
    logits = np.random.default_rng(4).normal(size=mixed.shape).astype("float32")
    z = logits - logits.max(axis=1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    target = (1 - 0.1) * mixed + 0.1 / 10
    expected = float(np.mean(-(target * log_softmax).sum(axis=1)))
    loss = float(model.compute_loss(y=keras.ops.convert_to_tensor(mixed), y_pred=keras.ops.convert_to_tensor(logits)))
    assert loss == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- augmentation


def _only(recipe: recipes.Recipe, **fields) -> list:
    """``recipes.augmentations`` of the recipe with every other augmentation switched off."""
    off = dict(crop_padding=0, flip=False, cutout_length=0, mixup_alpha=0.0, brightness=0.0)
    return recipes.augmentations(recipe.replace(**{**off, **fields}))


def _apply(fns, images, labels):
    images, labels = tf.constant(images), tf.constant(labels)  # they run inside tf.data: tensors in
    for fn in fns:
        images, labels = fn(images, labels)[:2]
    return np.asarray(images), np.asarray(labels)


def _one_hot(n, k=10):
    return np.eye(k, dtype="float32")[np.arange(n) % k]


def _shape(recipe):
    return data.DATASETS[recipe.dataset].input_shape


@pytest.mark.parametrize("name", NAMES)
def test_augmentations_are_exactly_the_enabled_fields(name):
    recipe = _recipe(name)
    enabled = (bool(recipe.crop_padding or recipe.flip) + bool(recipe.cutout_length) + bool(recipe.mixup_alpha)
               + bool(recipe.brightness))
    fns = recipes.augmentations(recipe)
    assert len(fns) == enabled, name
    h, w, c = _shape(recipe)
    images = np.random.default_rng(0).random((8, h, w, c), dtype=np.float32)
    out, _ = _apply(fns, images, _one_hot(8))
    if not enabled:
        np.testing.assert_array_equal(out, images)


def test_brightness_field_offsets_each_image_by_at_most_its_value():
    recipe = _recipe("mnist_1500").replace(brightness=0.2, crop_padding=0)
    fns = recipes.augmentations(recipe)
    assert len(fns) == 1
    images = np.full((256, 28, 28, 1), 0.5, np.float32)
    out, _ = _apply(fns, images, _one_hot(256))
    delta = out[:, 0, 0, 0] - 0.5
    np.testing.assert_allclose(out, delta[:, None, None, None] + images, atol=1e-6)  # one offset per image
    assert np.abs(delta).max() <= 0.2 + 1e-6 and delta.min() < -0.15 and delta.max() > 0.15


@pytest.mark.parametrize("name", _where(lambda r: r.crop_padding or r.flip))
def test_crop_shifts_by_at_most_the_padding_and_flips_only_when_asked(name):
    recipe = _recipe(name)
    h, w, c = _shape(recipe)
    n, y0, x0 = 512, h // 2, w // 2 - 5  # one bright pixel left of centre: a flip moves it
    images = np.zeros((n, h, w, c), np.float32)
    images[:, y0, x0, :] = 1.0
    out, _ = _apply(_only(recipe, crop_padding=recipe.crop_padding, flip=recipe.flip), images, _one_hot(n))
    where = [np.argwhere(o[..., 0] == 1.0) for o in out]
    assert all(len(p) == 1 for p in where), "the pixel must move, not blur or vanish"
    ys, xs = np.array([p[0][0] for p in where]), np.array([p[0][1] for p in where])
    dy = ys - y0
    flipped = np.abs(xs - (w - 1 - x0)) <= recipe.crop_padding
    dx = np.where(flipped, xs - (w - 1 - x0), xs - x0)
    assert set(dy) == set(range(-recipe.crop_padding, recipe.crop_padding + 1)), "shifts must reach +-padding"
    assert set(dx) == set(range(-recipe.crop_padding, recipe.crop_padding + 1))
    if recipe.flip:
        assert 0.4 < flipped.mean() < 0.6
    else:
        assert not flipped.any()


@pytest.mark.parametrize("name", _where(lambda r: r.cutout_length))
def test_cutout_cuts_a_square_of_the_recipe_length(name):
    recipe = _recipe(name)
    h, w, c = _shape(recipe)
    length, n = recipe.cutout_length, 256
    out, _ = _apply(_only(recipe, cutout_length=length), np.ones((n, h, w, c), np.float32), _one_hot(n))
    cut = out[..., 0] == 0
    assert (out[cut[..., None].repeat(c, -1)] == 0).all() and set(np.unique(out)) <= {0.0, 1.0}
    for mask in cut:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert len(rows) <= length and len(cols) <= length
        assert mask.sum() == len(rows) * len(cols)  # a (border-clipped) square
    assert cut.sum(axis=(1, 2)).max() == length * length  # whole squares occur


def _mixup_weights(fn, calls: int = 300, n: int = 16) -> np.ndarray:
    """The mixing weights ``lam`` that ``fn`` used over ``calls`` batches, read back from its output.

    Sample ``i`` is a one-pixel image at flat position ``i`` with its own class, so in the
    output its own pixel holds ``lam`` and its partner's pixel ``1 - lam``. A sample paired with
    itself (or with ``lam`` rounding to 1 in float32, ~2 % of Beta(0.2, 0.2)) shows 1 and is
    left out. Per batch, each distinct weight counts once, so a per-batch and a per-sample
    ``lam`` are both read correctly.
    """
    images = np.eye(n, dtype=np.float32).reshape(n, 4, n // 4, 1)
    labels = np.eye(n, dtype=np.float32)
    weights = []
    for _ in range(calls):
        out, mixed = _apply([fn], images, labels)
        flat = out.reshape(n, -1)
        own = flat[np.arange(n), np.arange(n)]
        np.testing.assert_allclose(mixed[np.arange(n), np.arange(n)], own, atol=1e-6)  # labels mix like images
        np.testing.assert_allclose(flat.sum(axis=1), 1.0, atol=1e-5)  # a convex combination of two images
        weights.extend(np.unique(own[own < 1.0]))
    return np.array(weights, np.float64)


@pytest.mark.parametrize("name", _where(lambda r: r.mixup_alpha))
def test_mixup_draws_its_weights_from_beta_alpha(name):
    from scipy import stats

    recipe = _recipe(name)
    (fn,) = _only(recipe, mixup_alpha=recipe.mixup_alpha)
    lam = _mixup_weights(fn)
    assert len(lam) >= 250
    alpha = recipe.mixup_alpha
    p = stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue
    assert p > 1e-3, f"{name}: mixing weights do not follow Beta({alpha}, {alpha})"
    for wrong in (alpha / 2, alpha * 2):  # the check can tell the recipe's alpha from its neighbours
        assert stats.kstest(lam, stats.beta(wrong, wrong).cdf).pvalue < 1e-3


# ----------------------------------------------------------------------------- SWA


class _Tiny(keras.Model):
    def __init__(self):
        super().__init__()
        self.w = self.add_weight(shape=(1,), initializer="zeros", name="w")

    def call(self, x):
        return x * self.w


@pytest.mark.parametrize("name", NAMES)
def test_swa_averages_the_epochs_from_swa_start(name):
    recipe = _recipe(name)
    callbacks = list(recipes.technique_callbacks(recipe, recipe.epochs))
    if recipe.swa_start is None:
        assert callbacks == [], name
        return
    (swa,) = callbacks
    model = _Tiny()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    swa.set_model(model)
    swa.set_params({"epochs": recipe.epochs, "steps": 1, "verbose": 0})
    swa.on_train_begin()
    for epoch in range(recipe.epochs):  # the weight equals the epoch number during that epoch
        swa.on_epoch_begin(epoch)
        model.w.assign([float(epoch)])
        swa.on_epoch_end(epoch)
    swa.on_train_end()
    start = math.floor(recipe.swa_start * recipe.epochs)
    assert float(model.w.numpy()[0]) == pytest.approx(np.mean(np.arange(start, recipe.epochs)))


# ----------------------------------------------------------------------------- fit


def test_fit_runs_the_recipe_batches_epochs_and_techniques(data_dir):
    """batch_size and epochs reach Keras ``fit``; the SWA callback is passed; the LR schedule spans the run."""
    from keras_effcnn.callbacks import SWA

    name = _where(lambda r: r.swa_start is not None)[0]
    recipe = _recipe(name).replace(batch_size=50, epochs=3)
    model = recipes.build(recipe)
    seen = {}

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen["batches"] = seen.get("batches", 0) + 1

        def on_epoch_end(self, epoch, logs=None):
            seen["epochs"] = epoch + 1

    real_fit = model.fit

    def spy(*args, **kwargs):
        seen["callbacks"] = list(kwargs.get("callbacks") or ())
        return real_fit(*args, **kwargs)

    model.fit = spy
    recipes.fit(model, data_dir, subset=200, verbose=0, evaluate_test=False, callbacks=[Count()])
    assert seen["epochs"] == 3 and seen["batches"] == 3 * 4  # 200 images / 50 per batch
    swa = [cb for cb in seen["callbacks"] if isinstance(cb, SWA)]
    assert len(swa) == 1
    # The one-cycle rate was fitted to these 12 steps: after them it sits at its floor, far below the peak.
    assert int(model.optimizer.iterations) == 12
    assert float(model.optimizer.learning_rate) < recipe.learning_rate / 100


@pytest.mark.parametrize("name", _where(lambda r: "blur_padding" in r.model_options))
def test_blur_padding_option_reaches_every_blurpool(name):
    from keras_effcnn.layers import BlurPool2D

    wanted = _recipe(name).model_options["blur_padding"]
    pools = [layer for layer in _model(name).layers if isinstance(layer, BlurPool2D)]
    assert pools and {p.padding for p in pools} == {wanted}

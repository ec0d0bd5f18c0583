"""Hyperparameter search over recipes with KerasTuner, under a parameter budget.

A :class:`RecipeHyperModel` turns KerasTuner hyperparameters into a
:class:`~keras_effcnn.recipes.Recipe` (``Recipe.replace``) and trains every trial
through the recipe pipeline (``recipes.build`` + ``recipes.fit``: the dataset,
its augmentations, the LR schedule, SWA, SAM). The objective is the
final-epoch accuracy on a validation split carved from the training set
(``val_accuracy``); the test set is never used to pick anything.

The search space covers the paper's knobs (see :data:`KNOBS`): widths (one
width multiplier, or a choice per stage), BlurPool, squeeze-and-excitation
ratio, dropout, the one-cycle / cyclical schedule and its bounds, Mixup, Cutout,
label smoothing, SWA, SAM and the batch size. Knobs a zoo builder does not take
are left out of its default space.

A configuration whose model has more trainable parameters than ``budget`` is
never trained. The tuners made by :func:`make_tuner` reject it in the oracle,
before a trial exists, and replace it by an in-budget draw, so rejections
neither use up ``max_trials`` nor count as failed trials; the summary reports
how many were rejected. Only KerasTuner's public API is used: the oracles wrap
``Oracle.populate_space``, the search space is given to the oracle up front,
and :class:`RecipeTuner` overrides ``Tuner.run_trial``. (``RecipeHyperModel.build`` also raises
``keras_tuner.errors.FailedTrialError`` for an over-budget configuration, which
covers a stock KerasTuner tuner driving the hypermodel.)

Example:

```python
from keras_effcnn import recipes, tuning

hypermodel = tuning.RecipeHyperModel(recipes.get_recipe("mnist_1500").replace(epochs=3), budget=1_500)
tuner = tuning.make_tuner(hypermodel, "random", max_trials=10, directory="tuning")
tuner.search(data_dir="../shared/data", subset=10_000)
print(tuner.summary().format())
tuner.write_best_recipe()          # tuning/mnist_1500-random/best_recipe.json
```
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import keras
import keras_tuner as kt

from keras_effcnn import models, recipes
from keras_effcnn.recipes import Recipe

TUNERS = ("random", "bayesian", "hyperband")

OBJECTIVE = "val_accuracy"

#: Every knob of the search space and the recipe field or model option it sets.
KNOBS: dict[str, str] = {
    "width_multiplier": "scales every stage width of the base model (model option `widths`)",
    "stage_widths": "one width choice per stage, `width_1` ... `width_n` (model option `widths`); "
                    "its values are multipliers of each base stage width",
    "blurpool": "BlurPool anti-aliased downsampling on/off (model option `blurpool`)",
    "blur_filter_size": "BlurPool filter size, active when `blurpool` is on (model option `blur_filter_size`)",
    "se_ratio": "squeeze-and-excitation ratio, 0 = no SE (model option `se_ratio`)",
    "dropout": "dropout after each conv block (model option `dropout`)",
    "learning_rate": "peak learning rate of the schedule (recipe `learning_rate`)",
    "schedule": "`onecycle`, `cyclic` or `constant` (recipe `schedule`)",
    "lr_div_factor": "peak / lowest learning rate: one-cycle `div_factor`, cyclic `max_lr / base_lr`",
    "mixup_alpha": "Mixup Beta(alpha, alpha), 0 = off (recipe `mixup_alpha`)",
    "cutout_length": "Cutout square side in pixels, 0 = off (recipe `cutout_length`)",
    "label_smoothing": "label smoothing epsilon (recipe `label_smoothing`)",
    "swa_start": "fraction of the epochs after which SWA averages, 1.0 = no SWA (recipe `swa_start`)",
    "sam_rho": "SAM neighbourhood radius, 0 = plain SGD (recipe `sam_rho`)",
    "batch_size": "examples per step (recipe `batch_size`)",
}

# The model option each model knob needs from the zoo builder.
_MODEL_OPTION = {"width_multiplier": "widths", "stage_widths": "widths", "blurpool": "blurpool",
                 "blur_filter_size": "blur_filter_size", "se_ratio": "se_ratio", "dropout": "dropout"}

# Knobs tuned only when named in `space`.
_OPT_IN = ("stage_widths",)
# swa_start's value meaning "no SWA" (averaging would start after the last epoch).
_SWA_OFF = 1.0
_DEFAULT_VALIDATION_SPLIT = 0.1

# Marks a trial rejected for its size in the trial's message (summaries count it).
OVER_BUDGET = "over the parameter budget"


@dataclasses.dataclass(frozen=True)
class Range:
    """A continuous (or integer) interval for one knob.

    Args:
        min: lowest value.
        max: highest value.
        sampling: ``"linear"``, ``"log"`` or ``"reverse_log"`` (KerasTuner's samplings).
        step: grid step (None: continuous for floats, 1 for integers).

    Example:
        >>> Range(0.02, 0.4, sampling="log")
        Range(min=0.02, max=0.4, sampling='log', step=None)
    """

    min: float
    max: float
    sampling: str = "linear"
    step: float | None = None

    def __post_init__(self):
        if not self.min < self.max:
            raise ValueError(f"Range min={self.min!r} must be below max={self.max!r}")
        if self.sampling not in ("linear", "log", "reverse_log"):
            raise ValueError(f"Range sampling={self.sampling!r} is not allowed: "
                             "sampling must be one of ('linear', 'log', 'reverse_log')")
        if self.sampling != "linear" and not self.min > 0:
            raise ValueError(f"Range min={self.min!r} must be > 0 with sampling={self.sampling!r}")

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.min, self.max)) and (
            self.step is None or isinstance(self.step, int))


# ----------------------------------------------------------------------------- the search space


def builder_options(model: str) -> dict[str, inspect.Parameter]:
    """The keyword options a zoo builder takes, by name."""
    return dict(inspect.signature(models.get_spec(model).builder).parameters)


def base_widths(recipe: Recipe) -> tuple[int, ...] | None:
    """The recipe model's stage widths (its ``widths`` option or the builder default), or None."""
    options = builder_options(recipe.model)
    if "widths" not in options:
        return None
    return tuple(int(w) for w in recipe.model_options.get("widths", options["widths"].default))


def candidate_values(recipe: Recipe) -> dict[str, Any]:
    """Default candidates of every knob for ``recipe`` (lists are choices, :class:`Range` an interval)."""
    lr = recipe.learning_rate
    return {
        "width_multiplier": [0.5, 0.75, 1.0, 1.25, 1.5],
        "stage_widths": [0.5, 0.75, 1.0, 1.25, 1.5],
        "blurpool": [False, True],
        "blur_filter_size": [2, 3, 5],
        "se_ratio": [0.0, 0.0625, 0.125, 0.25],
        "dropout": [0.0, 0.05, 0.1],
        "learning_rate": Range(lr / 4, lr * 2, sampling="log"),
        "schedule": ["onecycle", "cyclic"] if recipe.schedule != "constant" else ["constant", "onecycle", "cyclic"],
        "lr_div_factor": [10.0, 25.0],
        "mixup_alpha": [0.0, 0.1, 0.2, 0.4],
        "cutout_length": [0, 8, 16] if recipe.dataset == "cifar10" else [0, 4, 8],
        "label_smoothing": [0.0, 0.05, 0.1],
        "swa_start": [0.5, 0.75, _SWA_OFF],
        "sam_rho": [0.0, 0.02, 0.05],
        "batch_size": [64, 128, 256],
    }


def default_space(recipe: Recipe) -> dict[str, Any]:
    """The knobs tuned by default for ``recipe``, with their candidate values.

    Model knobs appear only when the zoo builder takes the option
    (``paper_cifar10`` has only ``dropout``); ``stage_widths`` is opt-in (name
    it in ``space``), ``width_multiplier`` is the default way to scale widths.

    Example:
        >>> sorted(default_space(recipes.get_recipe("mnist_1500")))[:3]
        ['batch_size', 'blurpool', 'cutout_length']
    """
    options = builder_options(recipe.model)
    return {k: v for k, v in candidate_values(recipe).items()
            if k not in _OPT_IN and (k not in _MODEL_OPTION or _MODEL_OPTION[k] in options)}


def resolve_space(recipe: Recipe, space: Mapping[str, Any] | Sequence[str] | str | None) -> dict[str, Any]:
    """Checks and completes a search space for ``recipe``.

    Args:
        recipe: the base recipe.
        space: None (:func:`default_space`); knob names, as a list or one
            comma-separated string (their default candidates); or a mapping
            knob -> candidates: a list (a choice), a :class:`Range`, or one value
            (fixed). Knobs left out keep the base recipe's value.

    Returns:
        A mapping knob -> candidates.
    """
    if space is None:
        return default_space(recipe)
    if isinstance(space, str):
        space = [s.strip() for s in space.split(",") if s.strip()]
    defaults = candidate_values(recipe)
    if not isinstance(space, Mapping):
        space = {name: defaults.get(name) for name in space}
    options = builder_options(recipe.model)
    resolved: dict[str, Any] = {}
    for name, values in space.items():
        if name not in KNOBS:
            raise ValueError(f"space knob {name!r} is unknown; allowed knobs: {list(KNOBS)}")
        if name in _MODEL_OPTION and _MODEL_OPTION[name] not in options:
            raise ValueError(f"space knob {name!r} needs the model option {_MODEL_OPTION[name]!r}, which "
                             f"the builder {recipe.model!r} does not take; its options: {sorted(options)}")
        if isinstance(values, (list, tuple)):
            if not values:
                raise ValueError(f"space knob {name!r} has no candidate values")
            values = list(values)
        elif not isinstance(values, (Range, bool, int, float, str)):
            raise ValueError(f"space knob {name!r}={values!r} is not allowed: give a list of choices, "
                             "a keras_effcnn.tuning.Range, or one fixed value")
        if name == "stage_widths" and not isinstance(values, list):
            raise ValueError(f"space knob 'stage_widths'={values!r} is not allowed: give a list of "
                             "multipliers of the base stage widths")
        resolved[name] = values
    if "width_multiplier" in resolved and "stage_widths" in resolved:
        raise ValueError("space knobs 'width_multiplier' and 'stage_widths' both set the widths; choose one")
    return resolved


# ----------------------------------------------------------------------------- the hypermodel


class RecipeHyperModel(kt.HyperModel):
    """A KerasTuner hypermodel over one recipe family (MNIST or CIFAR-10 alike).

    ``build(hp)`` maps the hyperparameters to a recipe
    (``base_recipe.replace(...)``) and returns ``recipes.build(recipe)``;
    ``fit(hp, model, ...)`` trains it with ``recipes.fit`` and reports the
    final-epoch metrics, with the objective ``val_accuracy`` measured on a
    validation split of the training set (after SWA installs its average, when
    SWA is on).

    Args:
        base_recipe: the recipe to start from: a :class:`Recipe`, a registered
            name or a recipe ``.json`` file. Its ``epochs`` is the epochs of each
            trial (Hyperband's ``max_epochs``).
        budget: the most trainable parameters a trial's model may have (None: no limit).
        space: the knobs to tune, see :func:`resolve_space`; None tunes every
            knob of :func:`default_space`.
        validation_split: the held-out fraction of the training set for the
            objective; default the recipe's, or 0.1 when the recipe has none.
        name: hypermodel name (KerasTuner's).

    Example:
        >>> hm = RecipeHyperModel("mnist_1500", budget=1_500, space=["width_multiplier", "mixup_alpha"])
        >>> hm.recipe_for({"width_multiplier": 0.5, "mixup_alpha": 0.2}).model_options["widths"]
        [4, 6, 6, 7, 8]
    """

    def __init__(self, base_recipe: Recipe | str | os.PathLike, budget: int | None = None,
                 space: Mapping[str, Any] | Sequence[str] | None = None, *,
                 validation_split: float | None = None, name: str | None = None):
        base = recipes.resolve(base_recipe)
        split = validation_split if validation_split is not None else (
            base.validation_split or _DEFAULT_VALIDATION_SPLIT)
        if not 0 < split < 1:
            raise ValueError(f"validation_split={split!r} is not allowed: the objective needs a validation "
                             "split in (0, 1) carved from the training set")
        if budget is not None and (isinstance(budget, bool) or not int(budget) == budget or budget < 1):
            raise ValueError(f"budget={budget!r} is not allowed: budget must be a positive integer "
                             "number of trainable parameters, or None")
        super().__init__(name=name or base.name, tunable=True)
        self.base_recipe = base.replace(validation_split=split)
        self.budget = None if budget is None else int(budget)
        self.space = resolve_space(self.base_recipe, space)
        self._widths = base_widths(self.base_recipe)

    # -- hyperparameters -> recipe --------------------------------------------------

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """Registers the knobs in ``hp``; returns their current values (None when inactive)."""
        base = self.base_recipe
        values: dict[str, Any] = {}
        for knob, candidates in self.space.items():
            if knob == "stage_widths":
                for i, w in enumerate(self._widths, start=1):
                    choices = sorted({max(1, int(round(w * m))) for m in candidates})
                    values[f"width_{i}"] = _declare(hp, f"width_{i}", choices, default=w)
                continue
            parent = {}
            if knob == "blur_filter_size" and "blurpool" in self.space:
                parent = dict(parent_name="blurpool", parent_values=[True])
            values[knob] = _declare(hp, knob, candidates, default=_base_value(base, knob), **parent)
        return values

    def recipe_for(self, hp: kt.HyperParameters | Mapping[str, Any]) -> Recipe:
        """The recipe a set of hyperparameters (or a mapping of their values) stands for."""
        if not isinstance(hp, kt.HyperParameters):
            given = dict(hp)
            hp = kt.HyperParameters()
            self.declare_hyperparameters(hp)
            hp.values.update(given)
        values = {k: _plain(v) for k, v in self.declare_hyperparameters(hp).items() if v is not None}
        base = self.base_recipe
        options = dict(base.model_options)
        changes: dict[str, Any] = {}
        if "width_multiplier" in values:
            options["widths"] = [max(1, int(round(w * values["width_multiplier"]))) for w in self._widths]
        if any(k.startswith("width_") and k[6:].isdigit() for k in values):
            options["widths"] = [int(values[f"width_{i}"]) for i in range(1, len(self._widths) + 1)]
        for knob in ("blurpool", "blur_filter_size", "dropout"):
            if knob in values:
                options[knob] = values[knob]
        if "se_ratio" in values:
            options["se_ratio"] = values["se_ratio"] or None
        for field in ("learning_rate", "mixup_alpha", "cutout_length", "label_smoothing", "sam_rho", "batch_size"):
            if field in values:
                changes[field] = values[field]
        if "swa_start" in values:
            changes["swa_start"] = None if values["swa_start"] >= _SWA_OFF else values["swa_start"]
        schedule = values.get("schedule", base.schedule)
        # Schedule options belong to one schedule: switching drops the base recipe's.
        schedule_options = dict(base.schedule_options) if schedule == base.schedule else {}
        if "lr_div_factor" in values:
            lr = changes.get("learning_rate", base.learning_rate)
            if schedule == "onecycle":
                schedule_options["div_factor"] = values["lr_div_factor"]
            elif schedule == "cyclic":
                schedule_options["base_lr"] = lr / values["lr_div_factor"]
        epochs = hp.values.get("tuner/epochs")  # Hyperband's per-round budget
        return base.replace(model_options=options, schedule=schedule, schedule_options=schedule_options,
                            epochs=int(epochs) if epochs else base.epochs, **changes)

    # -- the budget ----------------------------------------------------------------

    def count_params(self, hp: kt.HyperParameters | Mapping[str, Any] | Recipe) -> int:
        """Trainable parameters of the model a configuration builds (cached per model options)."""
        recipe = hp if isinstance(hp, Recipe) else self.recipe_for(hp)
        key = json.dumps([recipe.model, recipe.num_classes, recipe.model_options], sort_keys=True, default=str)
        return _count_params(key)

    def within_budget(self, hp: kt.HyperParameters | Mapping[str, Any] | Recipe) -> bool:
        return self.budget is None or self.count_params(hp) <= self.budget

    # -- KerasTuner hooks ------------------------------------------------------------

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """Builds and compiles the trial's recipe; an over-budget model is refused before compiling."""
        recipe = self.recipe_for(hp)
        params = self.count_params(recipe)
        if self.budget is not None and params > self.budget:
            raise kt.errors.FailedTrialError(
                f"{OVER_BUDGET}: {params:,} trainable parameters > budget {self.budget:,}; not trained")
        return recipes.build(recipe)

    def fit(self, hp: kt.HyperParameters, model: keras.Model, data_dir: str | os.PathLike | None = None, *,
            subset: int | None = None, source: str = "auto", callbacks: Sequence[keras.callbacks.Callback] = (),
            verbose: Any = 0, **unused: Any) -> dict[str, float]:
        """Trains ``model`` through its recipe; returns the final epoch's metrics.

        Args:
            hp: the trial's hyperparameters.
            model: the model from :meth:`build` (it carries its recipe).
            data_dir: folder of the ``.npz`` datasets (see ``keras_effcnn.data``).
            subset: train on the first ``subset`` training images (quick searches).
            source: data source, see ``keras_effcnn.data.load``.
            callbacks: KerasTuner's callbacks (and any given to ``search``).
            verbose: Keras ``fit`` verbosity.

        Returns:
            ``{"val_accuracy", "val_loss", "accuracy", "loss"}`` of the trained model.
        """
        recipe = model.training_plan
        result = recipes.fit(model, data_dir, callbacks=list(callbacks), verbose=verbose, subset=subset,
                             source=source, evaluate_test=False)
        history = result.history
        metrics = {k: history[k][-1] for k in ("val_accuracy", "val_loss", "accuracy", "loss") if k in history}
        if recipe.swa_start is not None:
            # SWA replaces the weights when training ends, after the last logged validation.
            metrics.update(_validate(model, recipe, data_dir, subset, source))
        return metrics


def _declare(hp: kt.HyperParameters, name: str, candidates: Any, default: Any = None, **parent: Any) -> Any:
    """Registers one knob in ``hp`` (choice, interval or fixed value) and returns its value."""
    if isinstance(candidates, Range):
        kind = hp.Int if candidates.is_int else hp.Float
        lo, hi = candidates.min, candidates.max
        default = default if default is not None and lo <= default <= hi else None
        return kind(name, lo, hi, step=candidates.step, sampling=candidates.sampling, default=default, **parent)
    if isinstance(candidates, list):
        if all(isinstance(c, bool) for c in candidates) and set(candidates) == {False, True}:
            return hp.Boolean(name, default=bool(default), **parent)
        default = default if default in candidates else candidates[0]
        return hp.Choice(name, candidates, default=default, **parent)
    return hp.Fixed(name, candidates, **parent)


def _base_value(recipe: Recipe, knob: str) -> Any:
    options = {**{k: p.default for k, p in builder_options(recipe.model).items()}, **recipe.model_options}
    if knob == "width_multiplier":
        return 1.0
    if knob == "se_ratio":
        return options.get("se_ratio") or 0.0
    if knob in _MODEL_OPTION:
        return options.get(_MODEL_OPTION[knob])
    if knob == "swa_start":
        return _SWA_OFF if recipe.swa_start is None else recipe.swa_start
    if knob == "lr_div_factor":
        return recipe.schedule_options.get("div_factor", 25.0 if recipe.schedule == "onecycle" else 10.0)
    return getattr(recipe, knob)


def _plain(value: Any) -> Any:
    """A JSON-friendly builtin (KerasTuner may hand back NumPy scalars)."""
    return value.item() if hasattr(value, "item") else value


@functools.lru_cache(maxsize=4096)
def _count_params(key: str) -> int:
    model_name, num_classes, options = json.loads(key)
    model = models.build(model_name, num_classes=num_classes, **options)
    return models.count_params(model)["trainable"]


def _validate(model: keras.Model, recipe: Recipe, data_dir, subset: int | None, source: str) -> dict[str, float]:
    """The model's metrics on the recipe's validation split (the one ``recipes.fit`` held out)."""
    from keras_effcnn import data

    splits = data.load(recipe.dataset, data_dir, batch_size=recipe.batch_size,
                       validation_split=recipe.validation_split, seed=recipe.seed, subset=subset, source=source)
    result = model.evaluate(splits.val, return_dict=True, verbose=0)
    return {"val_accuracy": float(result["accuracy"]), "val_loss": float(result["loss"])}


# ----------------------------------------------------------------------------- budget-aware oracles


def _config_key(values: Mapping[str, Any]) -> str:
    """A configuration's identity: its active values without Hyperband's ``tuner/`` bookkeeping."""
    return json.dumps({k: _plain(v) for k, v in values.items() if not k.startswith("tuner/")},
                      sort_keys=True, default=str)


class _BudgetFilter:
    """Oracle mixin: a configuration over the budget never becomes a trial.

    Written against KerasTuner's public oracle API only: the stock oracle's
    ``populate_space`` proposes a configuration (random search, Hyperband's
    new round-0 configurations, Bayesian optimisation's random points and
    Gaussian-process proposals); when it is over the budget it is counted and
    replaced by a random configuration within the budget, drawn from the
    public search space (``get_space()``, ``HyperParameter.random_sample``),
    that no trial has used. Bookkeeping values the oracle attached to the
    proposal (Hyperband's ``tuner/epochs``, bracket and round) are kept, so the
    trial still fills the slot the oracle reserved for it. Hyperband's
    promotions retrain configurations that already trained, so they are within
    the budget by construction.

    Rejections are counted once per distinct configuration and kept in the
    oracle's saved state, so resumed and distributed searches report them too.
    After ``max_rejections`` draws in a row that were over the budget or already
    used, the space is taken to have no further configuration within the
    budget: ``budget_exhausted`` is set and the search stops.
    """

    def __init__(self, *args, count_params: Callable[[Mapping[str, Any]], int] | None = None,
                 budget: int | None = None, max_rejections: int = 200, **kwargs):
        self.count_params = count_params
        self.budget = budget
        self.max_rejections = int(max_rejections)
        self.rejected_over_budget = 0
        self.budget_exhausted = False
        self.rejected_configurations: set[str] = set()
        self.budget_draws = 0  # seeds this mixin's own random draws (saved, so resumes continue the stream)
        super().__init__(*args, **kwargs)

    def within_budget(self, values: Mapping[str, Any]) -> bool:
        """Whether ``values`` builds a model within the budget; counts a new over-budget configuration."""
        if self.budget is None or self.count_params is None:
            return True
        if self.count_params(values) <= self.budget:
            return True
        key = _config_key(values)
        if key not in self.rejected_configurations:
            self.rejected_configurations.add(key)
            self.rejected_over_budget += 1
        return False

    def random_configuration(self) -> dict[str, Any]:
        """One random configuration of the search space (active hyperparameters only)."""
        rng = random.Random(f"{self.seed}-{self.budget_draws}")
        self.budget_draws += 1
        hps = kt.HyperParameters()
        for hp in self.get_space().space:
            hps.merge([hp])
            if hps.is_active(hp):
                hps.values[hp.name] = hp.random_sample(rng.randrange(2**31))
        return hps.values

    def draw_within_budget(self) -> dict[str, Any] | None:
        """A random configuration within the budget that no trial has used, or None."""
        used = {_config_key(t.hyperparameters.values) for t in self.trials.values()}
        for _ in range(self.max_rejections):
            values = self.random_configuration()
            if _config_key(values) not in used and self.within_budget(values):
                return values
        return None

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        values = response.get("values")
        if response.get("status") != "RUNNING" or self.within_budget(values):
            return response
        replacement = self.draw_within_budget()
        if replacement is None:
            self.budget_exhausted = True
            self.save()  # no trial is created, which would otherwise save the counts
            return {"status": "STOPPED", "values": None}
        bookkeeping = {k: v for k, v in values.items() if k.startswith("tuner/")}
        return {"status": "RUNNING", "values": {**replacement, **bookkeeping}}

    def get_state(self):
        return {**super().get_state(), "rejected_over_budget": self.rejected_over_budget,
                "budget_exhausted": self.budget_exhausted, "budget_draws": self.budget_draws,
                "rejected_configurations": sorted(self.rejected_configurations)}

    def set_state(self, state):
        super().set_state(state)
        self.rejected_over_budget = int(state.get("rejected_over_budget", 0))
        self.budget_exhausted = bool(state.get("budget_exhausted", False))
        self.budget_draws = int(state.get("budget_draws", 0))
        self.rejected_configurations = set(state.get("rejected_configurations", ()))


class BudgetedRandomSearchOracle(_BudgetFilter, kt.oracles.RandomSearchOracle):
    """``RandomSearchOracle`` that never proposes a configuration over the parameter budget."""


class BudgetedHyperbandOracle(_BudgetFilter, kt.oracles.HyperbandOracle):
    """``HyperbandOracle`` that never proposes a configuration over the parameter budget."""


class BudgetedBayesianOptimizationOracle(_BudgetFilter, kt.oracles.BayesianOptimizationOracle):
    """``BayesianOptimizationOracle`` that never proposes a configuration over the parameter budget.

    The Gaussian process only sees trained trials, so it cannot learn the budget:
    an over-budget proposal is replaced by an in-budget random draw.
    """


# ----------------------------------------------------------------------------- the tuner


@dataclasses.dataclass
class TuningSummary:
    """What a search did, read from its oracle.

    Attributes:
        tuner: ``"random"``, ``"bayesian"`` or ``"hyperband"``.
        project_dir: the KerasTuner project folder.
        budget: the parameter budget (None: none).
        trials_completed: trials trained and scored.
        trials_failed: trials that crashed (not counting budget rejections).
        rejected_over_budget: configurations refused for their size, never trained.
        budget_exhausted: the search stopped because no configuration within the budget was found.
        best_trial_id: the trial with the highest ``val_accuracy`` (None before any completes).
        best_val_accuracy: its final-epoch validation accuracy.
        best_params: its trainable parameters.
        best_hyperparameters: its hyperparameter values (without Hyperband's ``tuner/`` bookkeeping).
        best_recipe: its configuration as a recipe.
    """

    tuner: str
    project_dir: str
    budget: int | None
    trials_completed: int
    trials_failed: int
    rejected_over_budget: int
    budget_exhausted: bool
    best_trial_id: str | None
    best_val_accuracy: float | None
    best_params: int | None
    best_hyperparameters: dict[str, Any]
    best_recipe: Recipe | None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["best_recipe"] = None if self.best_recipe is None else self.best_recipe.to_dict()
        return out

    def format(self) -> str:
        budget = "none" if self.budget is None else f"{self.budget:,} trainable parameters"
        lines = [f"{self.tuner} search in {self.project_dir}",
                 f"  trials trained:       {self.trials_completed}",
                 f"  trials failed:        {self.trials_failed}",
                 f"  rejected over budget: {self.rejected_over_budget} (budget: {budget})"]
        if self.budget_exhausted:
            lines.append("  stopped: no further configuration within the budget was found")
        if self.best_trial_id is None:
            lines.append("  best val_accuracy:    none (no trial completed)")
        else:
            lines.append(f"  best val_accuracy:    {self.best_val_accuracy:.4f} "
                         f"(trial {self.best_trial_id}, {self.best_params:,} parameters)")
            hps = ", ".join(f"{k}={_short(v)}" for k, v in self.best_hyperparameters.items())
            lines.append(f"  best hyperparameters: {hps}")
        return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class RecipeTuner(kt.Tuner):
    """A KerasTuner ``Tuner`` for a :class:`RecipeHyperModel`, with any of the budgeted oracles.

    Each trial writes its ``recipe.json`` into its trial folder. Hyperband's
    promoted configurations are retrained from scratch for their round's
    epochs rather than resumed from the previous round's weights, because a
    one-cycle or cyclical schedule fitted to a shorter run cannot be continued
    into a longer one.

    Use :func:`make_tuner` to create one.
    """

    def __init__(self, oracle: kt.Oracle, hypermodel: RecipeHyperModel, *, tuner_name: str = "random",
                 idle_wait_s: float = 1.0, **kwargs):
        self.tuner_name = tuner_name
        self.idle_wait_s = idle_wait_s
        self._awaiting_trial = False
        self.trained_trials: list[str] = []  # ids of the trials this process trained
        # The whole space is declared in the oracle up front (`make_tuner` passes it as the
        # oracle's `hyperparameters`). With a hypermodel, KerasTuner would also build models
        # at start to discover conditional hyperparameters, refusing an over-budget base
        # recipe; without one it doesn't, and `run_trial` (overridden) builds each trial.
        super().__init__(oracle=oracle, hypermodel=None, **kwargs)
        self.hypermodel = hypermodel

    def pre_create_trial(self):
        if self._awaiting_trial:
            # The last request got no trial (Hyperband waiting for a round): don't spin on the oracle.
            time.sleep(self.idle_wait_s)
        self._awaiting_trial = True

    def on_trial_begin(self, trial):
        self._awaiting_trial = False
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        if trial.status == "COMPLETED":
            self.trained_trials.append(trial.trial_id)
        super().on_trial_end(trial)

    def run_trial(self, trial, *args, **kwargs):
        self.hypermodel.recipe_for(trial.hyperparameters).to_json(
            Path(self.get_trial_dir(trial.trial_id)) / "recipe.json")
        return super().run_trial(trial, *args, **kwargs)

    # -- results ---------------------------------------------------------------------

    def summary(self) -> TuningSummary:
        """Counts and the best trial, read from the oracle (chief or single process)."""
        trials = list(self.oracle.trials.values())
        over = [t for t in trials if t.status == "FAILED" and OVER_BUDGET in (t.message or "")]
        failed = [t for t in trials if t.status in ("FAILED", "INVALID") and t not in over]
        completed = self._completed_trials()
        best = self._best_trial()
        recipe = self.best_recipe()
        return TuningSummary(
            tuner=self.tuner_name, project_dir=str(self.project_dir), budget=self.hypermodel.budget,
            trials_completed=len(completed), trials_failed=len(failed),
            rejected_over_budget=len(over) + int(getattr(self.oracle, "rejected_over_budget", 0)),
            budget_exhausted=bool(getattr(self.oracle, "budget_exhausted", False)),
            best_trial_id=best.trial_id if best else None,
            best_val_accuracy=float(best.score) if best else None,
            best_params=self.hypermodel.count_params(recipe) if best else None,
            best_hyperparameters={k: _plain(v) for k, v in best.hyperparameters.values.items()
                                  if not k.startswith("tuner/")} if best else {},
            best_recipe=recipe)

    def _completed_trials(self) -> list:
        return [t for t in self.oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]

    def _best_trial(self):
        """The completed trial with the highest ``val_accuracy`` (the first one on ties), or None."""
        return max(self._completed_trials(), key=lambda t: t.score, default=None)

    def best_recipe(self) -> Recipe | None:
        """The best trial's configuration as a recipe (None before any trial completes).

        It is the trial's configuration verbatim (epochs, validation split, seed),
        renamed ``<base>_tuned``; ``keras-effcnn train`` accepts its JSON file.
        """
        best = self._best_trial()
        if best is None:
            return None
        recipe = self.hypermodel.recipe_for(best.hyperparameters)
        return recipe.replace(
            name=f"{self.hypermodel.base_recipe.name}_tuned",
            description=f"tuned by keras-effcnn tune ({self.tuner_name}, trial {best.trial_id}): "
                        f"{OBJECTIVE} {best.score:.4f} on a {recipe.validation_split:g} validation split")

    def write_best_recipe(self, path: str | os.PathLike | None = None) -> Path | None:
        """Writes :meth:`best_recipe` as JSON (default ``<project_dir>/best_recipe.json``)."""
        recipe = self.best_recipe()
        if recipe is None:
            return None
        path = Path(path) if path is not None else Path(self.project_dir) / "best_recipe.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        recipe.to_json(path)
        return path


def make_tuner(hypermodel: RecipeHyperModel, tuner: str = "random", *, max_trials: int | None = 10,
               directory: str | os.PathLike = "tuning", project_name: str | None = None, overwrite: bool = False,
               seed: int | None = None, max_rejections: int = 200, factor: int = 3,
               num_initial_points: int | None = None, max_consecutive_failed_trials: int = 10,
               **kwargs: Any) -> RecipeTuner:
    """A resumable, budget-aware tuner over ``hypermodel``.

    Re-running with the same ``directory`` and ``project_name`` (and
    ``overwrite=False``) reloads the project and continues: finished trials are
    kept, an interrupted one is run again, and a larger ``max_trials`` adds trials.

    Args:
        hypermodel: a :class:`RecipeHyperModel`.
        tuner: ``"random"``, ``"bayesian"`` (needs scikit-learn) or ``"hyperband"``.
        max_trials: the most trials to train (rejected configurations don't
            count); for Hyperband a cap on top of its brackets (None: no cap).
        directory: folder of KerasTuner projects.
        project_name: default ``<recipe>-<tuner>``.
        overwrite: start afresh, deleting the project.
        seed: the oracle's seed (default the base recipe's seed).
        max_rejections: draws in a row that are over the budget or already used after
            which the search stops (no further configuration within the budget).
        factor: Hyperband's reduction factor (``max_epochs`` is the recipe's epochs).
        num_initial_points: Bayesian optimisation's random trials before the
            Gaussian process (default ``max(3, max_trials // 3)``).
        max_consecutive_failed_trials: crashed trials in a row that stop the search.
        **kwargs: more ``keras_tuner.Tuner`` arguments (e.g. ``executions_per_trial``).

    Returns:
        A :class:`RecipeTuner`; call ``search(data_dir=..., subset=..., verbose=...)``.
    """
    if tuner not in TUNERS:
        raise ValueError(f"tuner={tuner!r} is not allowed: tuner must be one of {TUNERS}")
    if max_trials is not None and (isinstance(max_trials, bool) or int(max_trials) != max_trials or max_trials < 1):
        raise ValueError(f"max_trials={max_trials!r} is not allowed: max_trials must be an integer >= 1")
    if max_rejections < 1:
        raise ValueError(f"max_rejections={max_rejections!r} is not allowed: max_rejections must be >= 1")
    space = kt.HyperParameters()
    hypermodel.declare_hyperparameters(space)
    common = dict(objective=kt.Objective(OBJECTIVE, direction="max"), hyperparameters=space,
                  seed=hypermodel.base_recipe.seed if seed is None else seed,
                  max_consecutive_failed_trials=max_consecutive_failed_trials,
                  count_params=hypermodel.count_params, budget=hypermodel.budget, max_rejections=max_rejections)
    if tuner == "random":
        oracle = BudgetedRandomSearchOracle(max_trials=max_trials, **common)
    elif tuner == "bayesian":
        points = num_initial_points or max(3, (max_trials or 9) // 3)
        oracle = BudgetedBayesianOptimizationOracle(max_trials=max_trials, num_initial_points=points, **common)
    else:
        if factor < 2:
            raise ValueError(f"factor={factor!r} is not allowed: Hyperband's factor must be an integer >= 2")
        oracle = BudgetedHyperbandOracle(max_epochs=hypermodel.base_recipe.epochs, factor=factor, **common)
        oracle.max_trials = max_trials
    return RecipeTuner(oracle, hypermodel, tuner_name=tuner, directory=str(directory),
                       project_name=project_name or f"{hypermodel.base_recipe.name}-{tuner}",
                       overwrite=overwrite, **kwargs)


# ----------------------------------------------------------------------------- distributed roles


def tuner_role() -> str:
    """``"chief"``, ``"worker"`` or ``"single"``, from KerasTuner's environment variables.

    KerasTuner runs distributed when ``KERASTUNER_ORACLE_IP``,
    ``KERASTUNER_ORACLE_PORT`` and ``KERASTUNER_TUNER_ID`` are set: the process
    whose tuner id contains ``chief`` serves the oracle, the others train trials.
    """
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"

"""The model class of recipe models: a functional model that carries its recipe.

``keras_effcnn.recipes.build`` returns a :class:`RecipeModel` (a
:class:`SAMRecipeModel` for recipes with SAM). Compared with a plain functional
model it

* keeps the recipe (its training plan) in its config, so ``model.save`` /
  ``keras.models.load_model`` bring ``model.training_plan`` back;
* sizes the recipe's learning-rate schedule to the ``fit`` it is given: a
  one-cycle or cyclical schedule spans that call's ``epochs`` x ``steps`` (from
  Keras's own fit parameters), counted from the optimizer step the call starts
  at (``initial_epoch`` included), so a short plain ``fit`` reaches the peak rate;
* leaves itself usable after a ``fit`` / ``evaluate`` call that failed while
  tracing (e.g. on labels of the wrong shape);
* distils from the recipe's ``teacher`` while training, when it names one
  (``keras_effcnn.distillation``).

Only keras is imported here: ``import keras_effcnn`` registers these classes
cheaply.
"""

from __future__ import annotations

import inspect
import json
import warnings

import keras

from keras_effcnn.sam import SAMModel

__all__ = ["RecipeMixin", "RecipeModel", "SAMRecipeModel", "ShiftedSchedule"]


@keras.saving.register_keras_serializable(package="keras_effcnn")
class ShiftedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule(step - offset)``: a schedule that starts at optimizer step ``offset``.

    Args:
        schedule: a ``LearningRateSchedule``.
        offset: the optimizer step at which ``schedule``'s step 0 falls.

    Example:

    ```python
    lr = ShiftedSchedule(keras_effcnn.schedules.OneCycle(0.1, total_steps=100), offset=500)
    ```
    """

    def __init__(self, schedule, offset: int):
        super().__init__()
        self.schedule = schedule
        self.offset = int(offset)

    def __call__(self, step):
        return self.schedule(keras.ops.maximum(keras.ops.cast(step, "float32") - float(self.offset), 0.0))

    def get_config(self) -> dict:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "offset": self.offset}

    @classmethod
    def from_config(cls, config: dict) -> "ShiftedSchedule":
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


class _SizeSchedule(keras.callbacks.Callback):
    """Re-sizes the recipe's schedule from ``fit``'s own ``epochs`` and ``steps`` before training starts."""

    def __init__(self, initial_epoch: int):
        super().__init__()
        self.initial_epoch = int(initial_epoch)

    def on_train_begin(self, logs=None):
        self.model.size_schedule(self.params.get("steps"), self.params["epochs"], self.initial_epoch)


class RecipeMixin:
    """What a recipe model adds to a functional model (see :class:`RecipeModel`).

    A mixin, not a base class: Keras rewrites the bases of functional ``Model``
    subclasses when their first instance is built, so :class:`SAMRecipeModel`
    derives from ``SAMModel`` and this mixin rather than from both model classes.
    """

    def __init__(self, *args, recipe: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_recipe(recipe)

    def _set_recipe(self, recipe: dict | None) -> None:
        # Kept as JSON text: plain data that Keras's attribute tracking leaves alone.
        self._recipe_json = None if recipe is None else json.dumps(recipe, sort_keys=True)
        self._plan = None
        # id() of the optimizer a recipe compiled; a reference would make saving walk into it twice.
        self._recipe_optimizer_id = None
        # (steps per epoch, epochs, first step) the schedule spans; None: not sized yet.
        self.schedule_sizing = None

    @property
    def training_plan(self):
        """The recipe (``keras_effcnn.recipes.Recipe``) or None."""
        if self._recipe_json is None:
            return None
        if self._plan is None:
            from keras_effcnn.recipes import Recipe

            self._plan = Recipe.from_json(self._recipe_json)
        return self._plan

    @training_plan.setter
    def training_plan(self, recipe) -> None:
        # The object itself is kept, so that it compares equal to the caller's (tuples stay tuples).
        self._plan = recipe
        self._recipe_json = None if recipe is None else recipe.to_json()

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None:
            # Whether the optimizer is the recipe's, which fit() may re-size (a user's own is theirs).
            config = {**config, "recipe_optimizer": id(self.optimizer) == self._recipe_optimizer_id}
        return config

    def compile_from_config(self, config):
        config = dict(config)
        recipe_optimizer = config.pop("recipe_optimizer", False)
        super().compile_from_config(config)
        if recipe_optimizer:
            self._recipe_optimizer_id = id(self.optimizer)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss; in training, mixed with distillation from the recipe's ``teacher``.

        ``(1 - distill_alpha) * loss + distill_alpha * T^2 * KL(teacher || student at T)``
        (``keras_effcnn.distillation``); evaluation losses stay the compiled loss alone.
        """
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        plan = self.training_plan
        if not training or plan is None or plan.teacher is None:
            return loss
        from keras_effcnn import distillation

        teacher = distillation.load_teacher(plan.teacher)
        soft = distillation.distillation_loss(teacher(x, training=False), y_pred, plan.distill_temperature)
        alpha = plan.distill_alpha
        return (1.0 - alpha) * loss + alpha * keras.ops.cast(soft, loss.dtype)

    def size_schedule(self, steps_per_epoch: int | None, epochs: int, initial_epoch: int = 0) -> None:
        """Makes the recipe's learning-rate schedule span ``epochs`` x ``steps_per_epoch`` optimizer steps.

        Step 0 of the schedule is the optimizer step at which epoch 0 of this run
        falls (the current step less ``initial_epoch`` epochs). Does nothing for a
        constant rate or an optimizer the recipe did not make.
        """
        recipe = self.training_plan
        if recipe is None or recipe.schedule == "constant" or self.optimizer is None \
                or id(self.optimizer) != self._recipe_optimizer_id:
            return
        if steps_per_epoch is None:
            warnings.warn("fit() does not know its steps per epoch (a dataset of unknown length), so the "
                          f"{recipe.schedule} schedule keeps its sizing {self.schedule_sizing}; pass "
                          "steps_per_epoch= to fit", stacklevel=3)
            return
        first = int(keras.ops.convert_to_numpy(self.optimizer.iterations)) - initial_epoch * steps_per_epoch
        sizing = (int(steps_per_epoch), int(epochs), first)
        if sizing == self.schedule_sizing:
            return
        from keras_effcnn.recipes import learning_rate_schedule

        schedule = learning_rate_schedule(recipe, steps_per_epoch, epochs)
        self.optimizer.learning_rate = schedule if first == 0 else ShiftedSchedule(schedule, first)
        self.schedule_sizing = sizing
        # The schedule is read when the train step is traced: trace it again.
        self.make_train_function(force=True)

    def mark_schedule_sized(self, steps_per_epoch: int, epochs: int) -> None:
        """Records that the current optimizer's schedule was made for ``epochs`` x ``steps_per_epoch``."""
        self._recipe_optimizer_id = id(self.optimizer)
        self.schedule_sizing = (int(steps_per_epoch), int(epochs), 0)

    def fit(self, *args, **kwargs):
        bound = inspect.signature(super().fit).bind(*args, **kwargs)
        callbacks = bound.arguments.get("callbacks")
        if not isinstance(callbacks, keras.callbacks.CallbackList):
            # First, so that callbacks restoring a checkpoint (and the optimizer step) come after it.
            bound.arguments["callbacks"] = [_SizeSchedule(bound.arguments.get("initial_epoch", 0)),
                                            *(callbacks or [])]
        try:
            return super().fit(*bound.args, **bound.kwargs)
        except Exception:
            self._forget_traces()
            raise

    def evaluate(self, *args, **kwargs):
        try:
            return super().evaluate(*args, **kwargs)
        except Exception:
            self._forget_traces()
            raise

    def _forget_traces(self) -> None:
        # A trace that failed half-way leaves a tf.function whose next call would create variables on a
        # non-first call; fresh functions start over.
        self.make_train_function(force=True)
        self.make_test_function(force=True)

    def get_config(self) -> dict:
        config = super().get_config()
        config["recipe"] = None if self._recipe_json is None else json.loads(self._recipe_json)
        return config


@keras.saving.register_keras_serializable(package="keras_effcnn")
class RecipeModel(RecipeMixin, keras.Model):
    """A functional model built by a recipe; ``training_plan`` is the recipe.

    Build it with ``keras_effcnn.recipes.build`` (or a recipe function such as
    ``recipes.cifar10_140k()``), which compiles it with the recipe's optimizer,
    loss (:class:`keras_effcnn.losses.ClassificationCrossentropy`, integer or
    one-hot labels) and metric.

    Args:
        *args, **kwargs: as for a functional ``keras.Model`` (``inputs``, ``outputs``, ``name``).
        recipe: the recipe as a dict (``Recipe.to_dict()``), or None.

    Example:

    ```python
    model = keras_effcnn.recipes.cifar10_140k()
    model.fit(x_train, y_train, epochs=5)      # integer labels; one-cycle over these 5 epochs
    model.save("m.keras")
    keras.models.load_model("m.keras").training_plan   # the recipe, after `import keras_effcnn`
    ```
    """


@keras.saving.register_keras_serializable(package="keras_effcnn")
class SAMRecipeModel(RecipeMixin, SAMModel):
    """A :class:`RecipeModel` trained with SAM / ASAM (``keras_effcnn.sam.SAMModel``'s train step).

    Args:
        *args, **kwargs: as for :class:`RecipeModel` and :class:`keras_effcnn.sam.SAMModel`
            (``rho``, ``adaptive``, ``num_splits``, ``eps``).
    """

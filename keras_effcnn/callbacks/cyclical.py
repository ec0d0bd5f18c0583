"""Per-batch learning-rate callback: drive a float-LR optimizer from any schedule."""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np

# Vectorized schedules are evaluated for this many future steps at once so that the
# per-batch cost is a NumPy lookup, not a dozen eager ops.
_CACHE_STEPS = 1024


def set_learning_rate(optimizer, value: float, caller: str) -> None:
    """Assign ``value`` to ``optimizer.learning_rate``.

    Raises:
        ValueError: when the optimizer was built with a ``LearningRateSchedule``
            (its rate is then not a variable and cannot be set per batch).
    """
    try:
        optimizer.learning_rate = float(value)
    except TypeError as err:
        raise ValueError(
            f"{caller} sets the learning rate itself, so the optimizer must be created "
            "with a float `learning_rate` (e.g. SGD(learning_rate=0.1)), not with a "
            f"LearningRateSchedule; received learning_rate={optimizer._learning_rate!r}."
        ) from err


def get_learning_rate(optimizer) -> float:
    """The optimizer's current learning rate as a Python float."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


@keras.saving.register_keras_serializable(package="keras_effcnn")
class CyclicalLR(keras.callbacks.Callback):
    """Set the optimizer's learning rate before every batch from a schedule.

    The step passed to the schedule is ``optimizer.iterations`` (the number of
    updates applied so far), so a run resumed with
    ``keras.callbacks.BackupAndRestore`` continues the schedule where it stopped.
    Use this instead of ``SGD(learning_rate=schedule)`` when something else also
    needs to set the rate (e.g. :class:`~keras_effcnn.callbacks.SWA` during its
    averaging phase, placed after this callback), or to log the rate per epoch
    (``logs["learning_rate"]``).

    Args:
        schedule: a ``keras.optimizers.schedules.LearningRateSchedule`` (e.g.
            :class:`~keras_effcnn.schedules.CyclicalLearningRate`) or any callable
            mapping a step to a learning rate. Only ``LearningRateSchedule``
            objects are serializable through :meth:`get_config`.
        verbose: ``1`` prints the rate at the start of every epoch.

    Example:
        >>> from keras_effcnn.schedules import CyclicalLearningRate
        >>> cb = CyclicalLR(CyclicalLearningRate(1e-3, 1e-2, step_size=500))
        >>> # model.compile(optimizer=keras.optimizers.SGD(1e-3), ...)
        >>> # model.fit(ds, epochs=10, callbacks=[cb])
    """

    def __init__(self, schedule: Callable, verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise ValueError(
                f"`schedule` must be a LearningRateSchedule or a callable step -> lr; "
                f"received schedule={schedule!r}."
            )
        self.schedule = schedule
        self.verbose = verbose
        self._cache_start = 0
        self._cache = np.zeros(0)
        self._vectorized = True
        self._last_lr: float | None = None

    def learning_rate_at(self, step: int) -> float:
        """The schedule's value at ``step`` (cached in blocks of future steps)."""
        step = int(step)
        offset = step - self._cache_start
        if 0 <= offset < len(self._cache):
            return float(self._cache[offset])
        if self._vectorized:
            steps = np.arange(step, step + _CACHE_STEPS)
            try:
                values = np.asarray(keras.ops.convert_to_numpy(self.schedule(steps)), "float64")
            except Exception:  # a schedule written for scalar steps only
                values = None
            if values is not None and values.shape == steps.shape:
                self._cache_start, self._cache = step, values
                return float(values[0])
            self._vectorized = False
        return float(keras.ops.convert_to_numpy(self.schedule(step)))

    def _apply(self) -> float:
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        lr = self.learning_rate_at(step)
        if lr != self._last_lr:
            set_learning_rate(self.model.optimizer, lr, "CyclicalLR")
            self._last_lr = lr
        return lr

    def on_train_begin(self, logs=None):
        self._last_lr = None
        self._apply()

    def on_epoch_begin(self, epoch, logs=None):
        if self.verbose:
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            print(f"\nEpoch {epoch + 1}: CyclicalLR learning rate {self.learning_rate_at(step):.6g}")

    def on_train_batch_begin(self, batch, logs=None):
        self._apply()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = get_learning_rate(self.model.optimizer)

    def get_config(self) -> dict:
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config: dict) -> "CyclicalLR":
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


__all__ = ["CyclicalLR", "set_learning_rate", "get_learning_rate"]

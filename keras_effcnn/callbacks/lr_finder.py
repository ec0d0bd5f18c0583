"""Learning-rate range test (Smith 2017, section 3.3; the fast.ai "LR finder").

Train for a few hundred batches while the learning rate grows exponentially
from ``min_lr`` to ``max_lr``, record the (smoothed) loss against the rate, and
read good bounds off the curve: the rate of steepest descent and a tenth of the
rate at the loss minimum. The model's weights, BatchNorm statistics, optimizer
state and learning rate are restored afterwards.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import keras
import numpy as np

from keras_effcnn.callbacks.cyclical import get_learning_rate, set_learning_rate


@dataclasses.dataclass
class LRFinderResult:
    """What a range test measured and what it suggests.

    Attributes:
        lrs: learning rate used for each recorded batch.
        losses: that batch's training loss.
        smoothed_losses: bias-corrected exponential moving average of ``losses``.
        steepest_lr: rate where the smoothed loss falls fastest against
            ``log(lr)`` (before the minimum).
        min_loss_lr: rate at the minimum of the smoothed loss.
        suggested_bounds: ``(base_lr, max_lr)`` for a cyclical / one-cycle
            schedule: ``max_lr = min_loss_lr / 10`` (the fast.ai rule, safely
            below divergence) and ``base_lr = max_lr / 4`` (Smith 2017 suggests a
            ratio of 3-4).
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    steepest_lr: float
    min_loss_lr: float
    suggested_bounds: tuple[float, float]

    def plot(self, path: str | Path) -> Path:
        """Save the smoothed loss against the learning rate (log axis) as a PNG."""
        # The object-oriented Agg canvas leaves pyplot's global backend alone.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(self.lrs, self.losses, color="0.75", lw=0.8, label="batch loss")
        ax.plot(self.lrs, self.smoothed_losses, lw=1.8, label="smoothed loss")
        ax.axvline(self.steepest_lr, ls="--", color="tab:green", label=f"steepest {self.steepest_lr:.2g}")
        ax.axvline(self.min_loss_lr, ls=":", color="tab:red", label=f"min loss {self.min_loss_lr:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        finite = self.smoothed_losses[np.isfinite(self.smoothed_losses)]
        if finite.size:
            low, high = finite.min(), finite[: max(1, finite.size // 10)].max()
            ax.set_ylim(low - 0.05 * abs(low), max(high, low) * 1.5 + 1e-12)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return path


def analyze(
    lrs, losses, smoothing: float = 0.98, skip_start: int = 5
) -> LRFinderResult:
    """Smooth a recorded loss-vs-LR curve and derive the suggested rates.

    Args:
        lrs: increasing learning rates, one per batch.
        losses: the batch losses (may end with a divergent, non-finite value).
        smoothing: EMA factor ``beta`` of the loss, in ``[0, 1)``.
        skip_start: first points ignored when looking for the steepest descent
            (the smoothed curve is noisy there).

    Returns:
        An :class:`LRFinderResult`.
    """
    lrs = np.asarray(lrs, "float64")
    losses = np.asarray(losses, "float64")
    if lrs.size == 0:
        raise ValueError("`lrs` is empty: the range test recorded no batch.")
    smoothed = np.empty_like(losses)
    avg = 0.0
    for i, loss in enumerate(losses):
        avg = smoothing * avg + (1.0 - smoothing) * loss
        smoothed[i] = avg / (1.0 - smoothing ** (i + 1))
    finite = np.isfinite(smoothed)
    if not finite.any():
        raise ValueError("every recorded loss is non-finite; lower `min_lr`.")
    i_min = int(np.nanargmin(np.where(finite, smoothed, np.nan)))
    min_loss_lr = float(lrs[i_min])
    start = min(skip_start, max(i_min - 1, 0))
    if i_min - start >= 2:
        slope = np.gradient(smoothed[start : i_min + 1], np.log(lrs[start : i_min + 1]))
        steepest_lr = float(lrs[start + int(np.argmin(slope))])
    else:
        steepest_lr = min_loss_lr / 10.0
    max_lr = min_loss_lr / 10.0
    return LRFinderResult(lrs, losses, smoothed, steepest_lr, min_loss_lr, (max_lr / 4.0, max_lr))


@keras.saving.register_keras_serializable(package="keras_effcnn")
class LRFinder(keras.callbacks.Callback):
    """Learning-rate range test as a callback.

    Before batch ``i`` the rate is ``min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))``;
    after it the batch loss is recorded. Training stops after ``num_steps``
    batches or once the smoothed loss exceeds ``divergence_factor`` times its
    minimum (or is non-finite). At the end of training the model's weights
    (including BatchNorm statistics), the optimizer's variables and its
    learning rate are put back as they were, and :attr:`result` holds an
    :class:`LRFinderResult`. The optimizer must have a float learning rate.

    Keras reports a running mean of the loss over the epoch; the per-batch loss is
    recovered by differencing consecutive means (exact for equal-size batches).

    Args:
        min_lr: first rate of the sweep, ``> 0``.
        max_lr: last rate, ``> min_lr``.
        num_steps: number of batches of the sweep, ``>= 2``.
        smoothing: EMA factor of the loss, in ``[0, 1)``.
        divergence_factor: stop when the smoothed loss exceeds this multiple of
            its best value, ``> 1``.
        restore: put the weights, optimizer state and learning rate back at the end.
        verbose: ``1`` prints the suggestion at the end.

    Example:
        >>> finder = LRFinder(1e-4, 1.0, num_steps=50)
        >>> # model.fit(ds.repeat(), steps_per_epoch=50, callbacks=[finder])
        >>> # finder.result.suggested_bounds, finder.result.plot("lr.png")
    """

    def __init__(
        self,
        min_lr: float = 1e-5,
        max_lr: float = 10.0,
        num_steps: int = 100,
        smoothing: float = 0.98,
        divergence_factor: float = 4.0,
        restore: bool = True,
        verbose: int = 0,
    ):
        super().__init__()
        if not min_lr > 0:
            raise ValueError(f"`min_lr` must be > 0; received min_lr={min_lr!r}.")
        if not max_lr > min_lr:
            raise ValueError(f"`max_lr` must be > min_lr={min_lr!r}; received max_lr={max_lr!r}.")
        if not (num_steps >= 2 and float(num_steps).is_integer()):
            raise ValueError(f"`num_steps` must be an integer >= 2; received num_steps={num_steps!r}.")
        if not 0 <= smoothing < 1:
            raise ValueError(f"`smoothing` must be in [0, 1); received smoothing={smoothing!r}.")
        if not divergence_factor > 1:
            raise ValueError(
                f"`divergence_factor` must be > 1; received divergence_factor={divergence_factor!r}."
            )
        self.min_lr = float(min_lr)
        self.max_lr = float(max_lr)
        self.num_steps = int(num_steps)
        self.smoothing = float(smoothing)
        self.divergence_factor = float(divergence_factor)
        self.restore = restore
        self.verbose = verbose
        self.result: LRFinderResult | None = None

    def lr_at(self, i: int) -> float:
        """Learning rate of batch ``i`` of the sweep."""
        return self.min_lr * (self.max_lr / self.min_lr) ** (i / (self.num_steps - 1))

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if not optimizer.built:
            # Build now so that its slots can be saved and restored exactly.
            optimizer.build(self.model.trainable_variables)
        self._saved_lr = get_learning_rate(optimizer)
        set_learning_rate(optimizer, self.lr_at(0), "LRFinder")
        self._saved_weights = [np.array(w) for w in self.model.get_weights()]
        self._saved_opt = [np.array(keras.ops.convert_to_numpy(v)) for v in optimizer.variables]
        self._lrs, self._losses = [], []
        self._avg, self._best = 0.0, math.inf
        self._prev_batch, self._prev_mean = -1, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._prev_batch, self._prev_mean = -1, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        i = len(self._lrs)
        if i < self.num_steps:
            set_learning_rate(self.model.optimizer, self.lr_at(i), "LRFinder")

    def on_train_batch_end(self, batch, logs=None):
        i = len(self._lrs)
        if i >= self.num_steps or logs is None or "loss" not in logs:
            self.model.stop_training = True
            return
        mean = float(logs["loss"])
        # batch is the last index of this call; (batch - prev) batches went into it.
        n_new = batch - self._prev_batch
        loss = ((batch + 1) * mean - (self._prev_batch + 1) * self._prev_mean) / n_new
        self._prev_batch, self._prev_mean = batch, mean
        self._lrs.append(self.lr_at(i))
        self._losses.append(loss)
        self._avg = self.smoothing * self._avg + (1.0 - self.smoothing) * loss
        smoothed = self._avg / (1.0 - self.smoothing ** (i + 1))
        if not math.isfinite(smoothed) or smoothed > self.divergence_factor * self._best:
            self.model.stop_training = True
        self._best = min(self._best, smoothed)
        if len(self._lrs) >= self.num_steps:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self._lrs:
            self.result = analyze(self._lrs, self._losses, self.smoothing)
            if self.verbose:
                lo, hi = self.result.suggested_bounds
                print(
                    f"LRFinder: steepest descent at {self.result.steepest_lr:.3g}, minimum loss at "
                    f"{self.result.min_loss_lr:.3g}; suggested bounds [{lo:.3g}, {hi:.3g}]"
                )
        if self.restore:
            self.model.set_weights(self._saved_weights)
            for var, value in zip(self.model.optimizer.variables, self._saved_opt):
                var.assign(value)
            set_learning_rate(self.model.optimizer, self._saved_lr, "LRFinder")

    def get_config(self) -> dict:
        return {
            "min_lr": self.min_lr,
            "max_lr": self.max_lr,
            "num_steps": self.num_steps,
            "smoothing": self.smoothing,
            "divergence_factor": self.divergence_factor,
            "restore": self.restore,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config: dict) -> "LRFinder":
        return cls(**config)


def find_lr(
    model: keras.Model,
    dataset,
    min_lr: float = 1e-5,
    max_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    divergence_factor: float = 4.0,
    plot_path: str | Path | None = None,
    batch_size: int = 32,
    verbose: int = 0,
) -> LRFinderResult:
    """Run a learning-rate range test on a compiled model and restore it after.

    Args:
        model: a compiled model whose optimizer has a float learning rate.
        dataset: a batched ``tf.data.Dataset`` of ``(x, y)`` (repeated as needed),
            or an ``(x, y)`` tuple of arrays batched with ``batch_size``.
        min_lr, max_lr, num_steps, smoothing, divergence_factor: see :class:`LRFinder`.
        plot_path: if given, the loss-vs-LR curve is saved there as a PNG.
        batch_size: batch size for array inputs.
        verbose: passed to ``fit`` and to the finder.

    Returns:
        The :class:`LRFinderResult` (``suggested_bounds`` feeds
        :class:`~keras_effcnn.schedules.CyclicalLearningRate`).

    Example:
        >>> # result = find_lr(model, train_ds, 1e-4, 1.0, num_steps=100, plot_path="lr.png")
        >>> # base_lr, max_lr = result.suggested_bounds
    """
    import tensorflow as tf

    if isinstance(dataset, tuple):
        dataset = tf.data.Dataset.from_tensor_slices(dataset).batch(batch_size)
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"`dataset` must be a batched tf.data.Dataset or an (x, y) tuple of arrays; "
            f"received {type(dataset).__name__}."
        )
    finder = LRFinder(min_lr, max_lr, num_steps, smoothing, divergence_factor, verbose=verbose)
    model.fit(
        dataset.repeat(), epochs=1, steps_per_epoch=num_steps, shuffle=False, callbacks=[finder], verbose=verbose
    )
    if finder.result is None:
        raise ValueError("the range test recorded no batch; is `dataset` empty?")
    if plot_path is not None:
        finder.result.plot(plot_path)
    return finder.result


__all__ = ["LRFinder", "LRFinderResult", "find_lr", "analyze"]

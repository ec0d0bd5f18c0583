"""Stochastic Weight Averaging (Izmailov et al., *Averaging Weights Leads to
Wider Optima and Better Generalization*, UAI 2018, arXiv 1803.05407).

From a start epoch on, the weights reached at the end of every ``period``-th
epoch are added into a running mean; when training ends the mean is installed
in the model and the BatchNorm moving statistics, which no longer match the
averaged weights, are recomputed with one pass over training batches.
"""

from __future__ import annotations

import glob
import math
import os
import re
import warnings

import keras
import numpy as np

from keras_effcnn.callbacks.cyclical import get_learning_rate, set_learning_rate
from keras_effcnn.callbacks.precise_bn import trainable_batchnorm_layers, update_bn

SWA_SCHEDULES = ("constant", "cyclic")
_STATE_FILE = "swa_state_epoch{:06d}.npz"
_KEEP_STATES = 3


@keras.saving.register_keras_serializable(package="keras_effcnn")
class SWA(keras.callbacks.Callback):
    """Stochastic Weight Averaging.

    * **Averaging.** At the end of epoch ``e >= start`` with
      ``(e - start + 1) % period == 0`` the trainable weights ``w`` are added into
      the running mean: ``mean += (w - mean) / (n + 1); n += 1`` (float64). Only
      trainable weights are averaged; BatchNorm statistics are recomputed instead.
    * **Learning rate.** During the SWA phase (epochs ``>= start``) the rate is set
      before every batch: ``"constant"`` holds ``swa_lr``; ``"cyclic"`` repeats,
      every ``cycle_length`` epochs, a linear per-batch decay from the rate the
      optimizer had when SWA began down to ``swa_lr``, and snapshots fall at cycle
      ends (Izmailov et al., eq. 2). With ``swa_lr=None`` (constant mode only) the
      rate is left to the optimizer's own schedule. Place this callback after any
      other callback that sets the rate (e.g. ``CyclicalLR``).
    * **End of training.** The mean is installed into the model and, if
      ``bn_data`` is given, the BatchNorm statistics are recomputed with
      :func:`update_bn`. Validation during training sees the current, not the
      averaged, weights.
    * **Fault tolerance.** With ``backup_dir`` set, the running mean, snapshot count
      and cyclic peak rate are written after every SWA-phase epoch to
      ``backup_dir/swa_state_epochNNNNNN.npz`` (the last three are kept). When
      ``fit`` resumes at epoch ``k`` (e.g. through
      ``keras.callbacks.BackupAndRestore``, whose checkpoint holds weights and
      optimizer), the state saved after epoch ``k - 1`` is loaded, so an
      interrupted run ends with the same average as an uninterrupted one. The
      files are deleted when training ends normally.

    Args:
        start_epoch: first (0-based) epoch of the SWA phase, in
            ``[0, epochs - 1]`` (checked when training starts).
        start_fraction: alternatively, start at ``floor(start_fraction * epochs)``,
            in ``[0, 1)``. Default when neither is given: 0.75.
        swa_lr: learning rate of the SWA phase (``> 0``); required for ``"cyclic"``.
        swa_schedule: ``"constant"`` or ``"cyclic"``.
        cycle_length: cycle length in epochs for ``"cyclic"``, ``>= 1``.
        period: epochs between snapshots, ``>= 1``; default 1 (``"constant"``) or
            ``cycle_length`` (``"cyclic"``, where it must be a multiple of it).
        bn_data: batches for the final BatchNorm recomputation (see :func:`update_bn`).
        backup_dir: directory for the resumable state (see above).
        verbose: ``1`` reports snapshots and the final installation.

    Example:
        >>> swa = SWA(start_fraction=0.75, swa_lr=0.01, bn_data=train_ds.take(100))  # doctest: +SKIP
        >>> model.fit(train_ds, epochs=40, callbacks=[swa])  # doctest: +SKIP
    """

    def __init__(
        self,
        start_epoch: int | None = None,
        start_fraction: float | None = None,
        swa_lr: float | None = None,
        swa_schedule: str = "constant",
        cycle_length: int = 1,
        period: int | None = None,
        bn_data=None,
        backup_dir: str | None = None,
        verbose: int = 1,
    ):
        super().__init__()
        if start_epoch is not None and start_fraction is not None:
            raise ValueError(
                "give only one of `start_epoch` and `start_fraction`; received "
                f"start_epoch={start_epoch!r}, start_fraction={start_fraction!r}."
            )
        if start_epoch is not None and not (start_epoch >= 0 and float(start_epoch).is_integer()):
            raise ValueError(f"`start_epoch` must be an integer >= 0; received start_epoch={start_epoch!r}.")
        if start_fraction is not None and not 0 <= start_fraction < 1:
            raise ValueError(f"`start_fraction` must be in [0, 1); received start_fraction={start_fraction!r}.")
        if swa_schedule not in SWA_SCHEDULES:
            raise ValueError(
                f"`swa_schedule` must be one of {list(SWA_SCHEDULES)}; received swa_schedule={swa_schedule!r}."
            )
        if swa_lr is not None and not swa_lr > 0:
            raise ValueError(f"`swa_lr` must be > 0; received swa_lr={swa_lr!r}.")
        if swa_schedule == "cyclic" and swa_lr is None:
            raise ValueError("`swa_lr` (the cycle's lowest rate) is required when swa_schedule='cyclic'.")
        if not (cycle_length >= 1 and float(cycle_length).is_integer()):
            raise ValueError(f"`cycle_length` must be an integer >= 1; received cycle_length={cycle_length!r}.")
        if period is None:
            period = cycle_length if swa_schedule == "cyclic" else 1
        if not (period >= 1 and float(period).is_integer()):
            raise ValueError(f"`period` must be an integer >= 1; received period={period!r}.")
        if swa_schedule == "cyclic" and period % cycle_length:
            raise ValueError(
                f"`period` must be a multiple of cycle_length={cycle_length} with swa_schedule='cyclic' "
                f"(snapshots are taken at cycle ends); received period={period!r}."
            )
        self.start_epoch = None if start_epoch is None else int(start_epoch)
        self.start_fraction = start_fraction
        self.swa_lr = None if swa_lr is None else float(swa_lr)
        self.swa_schedule = swa_schedule
        self.cycle_length = int(cycle_length)
        self.period = int(period)
        self.bn_data = bn_data
        self.backup_dir = backup_dir
        self.verbose = verbose
        self._reset()

    def _reset(self) -> None:
        self.swa_weights: list[np.ndarray] | None = None
        self.num_snapshots = 0
        self._cycle_max_lr: float | None = None
        self._first_epoch = True
        self._epoch = 0

    def resolved_start(self, epochs: int) -> int:
        """The 0-based first SWA epoch for a run of ``epochs`` epochs."""
        if self.start_epoch is not None:
            return self.start_epoch
        fraction = 0.75 if self.start_fraction is None else self.start_fraction
        return int(math.floor(fraction * epochs))

    # -- training hooks ---------------------------------------------------------
    def on_train_begin(self, logs=None):
        epochs = self.params.get("epochs")
        self._start = self.resolved_start(epochs)
        if not 0 <= self._start < epochs:
            raise ValueError(
                f"`start_epoch` must be in [0, {epochs - 1}] for a run of epochs={epochs}; "
                f"received start_epoch={self._start} (start_fraction={self.start_fraction})."
            )
        if self.swa_schedule == "cyclic" and not self.params.get("steps"):
            raise ValueError(
                "swa_schedule='cyclic' needs the number of steps per epoch; pass `steps_per_epoch` to fit()."
            )
        if self.swa_lr is not None:
            # Fail now, not at epoch `start`, if the rate is not settable.
            set_learning_rate(self.model.optimizer, get_learning_rate(self.model.optimizer), "SWA")
        self._reset()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._first_epoch:
            self._first_epoch = False
            if self.backup_dir is not None and epoch > self._start:
                self._load_state(epoch - 1)
        if epoch >= self._start and self._cycle_max_lr is None:
            self._cycle_max_lr = get_learning_rate(self.model.optimizer)

    def lr_at(self, epoch: int, batch: int) -> float | None:
        """The SWA-phase learning rate of ``batch`` of ``epoch`` (None: not set)."""
        if self.swa_lr is None or epoch < self._start:
            return None
        if self.swa_schedule == "constant":
            return self.swa_lr
        steps = self.params["steps"]
        cycle = self.cycle_length * steps
        t = (((epoch - self._start) * steps + batch) % cycle + 1) / cycle
        return (1.0 - t) * self._cycle_max_lr + t * self.swa_lr

    def on_train_batch_begin(self, batch, logs=None):
        lr = self.lr_at(self._epoch, batch)
        if lr is not None:
            set_learning_rate(self.model.optimizer, lr, "SWA")

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self._start:
            return
        if (epoch - self._start + 1) % self.period == 0:
            self._add_snapshot()
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: SWA snapshot {self.num_snapshots} added to the average")
        if self.backup_dir is not None:
            self._save_state(epoch)

    def _add_snapshot(self) -> None:
        weights = [np.asarray(keras.ops.convert_to_numpy(v), "float64") for v in self.model.trainable_variables]
        if self.swa_weights is None:
            self.swa_weights = weights
        else:
            n = self.num_snapshots
            for mean, w in zip(self.swa_weights, weights):
                mean += (w - mean) / (n + 1)
        self.num_snapshots += 1

    def on_train_end(self, logs=None):
        if self.num_snapshots == 0:
            warnings.warn("SWA: training ended before the first snapshot; weights left unchanged.")
            return
        for var, mean in zip(self.model.trainable_variables, self.swa_weights):
            var.assign(mean.astype(var.dtype))
        if self.bn_data is not None:
            update_bn(self.model, self.bn_data)
        elif trainable_batchnorm_layers(self.model):
            warnings.warn(
                "SWA: the model has BatchNorm layers but no `bn_data` was given; their statistics "
                "belong to the last iterate, not to the averaged weights. Pass bn_data= or call "
                "keras_effcnn.callbacks.update_bn(model, train_ds)."
            )
        if self.verbose:
            print(f"SWA: installed the average of {self.num_snapshots} snapshots")
        if self.backup_dir is not None:
            for path in self._state_files():
                os.remove(path)

    # -- resumable state ---------------------------------------------------------
    def _state_files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.backup_dir, "swa_state_epoch*.npz")))

    def _save_state(self, epoch: int) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        arrays = {f"w{i}": w for i, w in enumerate(self.swa_weights or [])}
        path = os.path.join(self.backup_dir, _STATE_FILE.format(epoch))
        tmp = path + ".tmp.npz"
        np.savez(
            tmp,
            epoch=epoch,
            num_snapshots=self.num_snapshots,
            cycle_max_lr=np.nan if self._cycle_max_lr is None else self._cycle_max_lr,
            **arrays,
        )
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written state
        for old in self._state_files()[:-_KEEP_STATES]:
            os.remove(old)

    def _load_state(self, epoch: int) -> None:
        path = os.path.join(self.backup_dir, _STATE_FILE.format(epoch))
        if not os.path.exists(path):
            found = [int(re.findall(r"(\d+)", os.path.basename(p))[0]) for p in self._state_files()]
            warnings.warn(
                f"SWA: resuming at (0-based) epoch {epoch + 1} but {self.backup_dir!r} holds no averaging "
                f"state saved after epoch {epoch} (states after epochs {found}); the average restarts."
            )
            return
        variables = self.model.trainable_variables
        with np.load(path) as state:
            n = int(state["num_snapshots"])
            weights = [state[k] for k in sorted((k for k in state.files if k.startswith("w")), key=lambda k: int(k[1:]))]
            cycle_max_lr = float(state["cycle_max_lr"])
        shapes = [tuple(w.shape) for w in weights]
        if n and shapes != [tuple(v.shape) for v in variables]:
            raise ValueError(
                f"SWA state in {path!r} does not match the model: saved weight shapes {shapes}, "
                f"model trainable variable shapes {[tuple(v.shape) for v in variables]}."
            )
        weights = weights if n else None
        self.swa_weights, self.num_snapshots = weights, n
        self._cycle_max_lr = None if math.isnan(cycle_max_lr) else cycle_max_lr
        if self.verbose:
            print(f"SWA: resumed the average of {n} snapshots from {path}")

    # -- resume protocol of keras_effcnn.callbacks.checkpoint.ResumableCheckpoint ----------
    def get_state(self) -> dict:
        """The running average, for a checkpoint (restored by :meth:`set_state`)."""
        return {"swa_weights": list(self.swa_weights or []), "num_snapshots": self.num_snapshots,
                "cycle_max_lr": self._cycle_max_lr}

    def set_state(self, state: dict) -> None:
        self.swa_weights = [np.array(w, "float64") for w in state["swa_weights"]] or None
        self.num_snapshots = int(state["num_snapshots"])
        self._cycle_max_lr = state["cycle_max_lr"]
        # The checkpoint already carries the average: don't also load a backup_dir state.
        self._first_epoch = False

    def get_config(self) -> dict:
        return {
            "start_epoch": self.start_epoch,
            "start_fraction": self.start_fraction,
            "swa_lr": self.swa_lr,
            "swa_schedule": self.swa_schedule,
            "cycle_length": self.cycle_length,
            "period": self.period,
            "backup_dir": self.backup_dir,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config: dict) -> "SWA":
        return cls(**config)


__all__ = ["SWA", "update_bn", "SWA_SCHEDULES"]

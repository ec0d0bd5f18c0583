"""Resumable training: a run killed at any step continues where it stopped.

:class:`ResumableCheckpoint` writes the *whole* training state to one ``.npz``
file every ``save_every_steps`` batches and at every epoch end:

* every model variable (weights, BatchNorm statistics, dropout seed-generator
  states), every optimizer variable (slots, ``iterations`` - so a one-cycle or
  cyclical schedule continues at the right step - and the learning rate when it
  is a variable), and the running metric totals of the current epoch;
* the position ``(epoch, batch)``: epochs finished and batches of the current
  epoch already trained;
* the history of the finished epochs;
* the state of other callbacks that implement the small protocol
  ``get_state() -> dict`` / ``set_state(dict)`` (see :func:`resume_callbacks`),
  e.g. SWA's running average.

When ``fit`` is called again with the same arguments, the newest readable
checkpoint is restored in ``on_train_begin``, ``fit`` starts at its epoch, and
the batches of that epoch that were already trained are drawn from the data
iterator but not trained on, so the next trained batch is the one that came
next in the interrupted run. The data pipeline must produce the same batches
for a given epoch in a new process (its epoch ``k`` must not depend on how
often it was iterated before); see ``docs/reliability.md``.

In multi-process training (``keras_effcnn.distribute``) process 0 writes and every
process restores, so the directory must be shared by all of them.

Writes are atomic (a temporary file, ``fsync``, then ``os.replace``) and the
previous ``keep - 1`` checkpoints are kept, so a kill during a write leaves the
last good checkpoint in place, and a damaged newest file (detected by the zip
CRCs) makes the resume fall back to the previous one with a warning.

Example:

```python
from keras_effcnn.callbacks.checkpoint import ResumableCheckpoint

ckpt = ResumableCheckpoint("runs/demo/checkpoints", save_every_steps=100)
model.fit(train_ds, epochs=10, callbacks=[ckpt])   # killed at epoch 4, batch 230
model.fit(train_ds, epochs=10, callbacks=[ckpt])   # same call again: trains on from
                                                   # epoch 4, batch 231
ckpt.history                                       # all 10 epochs' logs
```
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

FORMAT_VERSION = 1
_NAME = "ckpt-e{epoch:06d}-b{batch:07d}.npz"
_NAME_RE = re.compile(r"^ckpt-e(\d{6})-b(\d{7})\.npz$")
_META = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint directory holds checkpoints, but none that can be resumed from."""


# ----------------------------------------------------------------------------- file format


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Atomically writes ``arrays`` plus the JSON ``meta`` to the ``.npz`` file ``path``.

    The data goes to a temporary file in the same directory, is flushed to disk,
    and only then renamed over ``path``, so readers never see a partial file.

    Args:
        path: destination ``.npz`` file.
        arrays: name -> array (numeric arrays; nothing that needs pickle).
        meta: JSON-serialisable metadata, stored as the ``__meta__`` entry.

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> p = write_checkpoint(tempfile.mkdtemp() + "/c.npz", {"w": np.zeros(3)}, {"epoch": 1})
        >>> read_checkpoint(p).meta["epoch"]
        1
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{_META: np.array(json.dumps(meta))}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


class Checkpoint:
    """One checkpoint file, read and verified.

    Attributes:
        path: the file.
        meta: its metadata (``epoch``, ``batch``, ``global_step``, ``history``, ...).
        arrays: name -> array.
    """

    def __init__(self, path: Path, meta: dict, arrays: dict[str, np.ndarray]):
        self.path, self.meta, self.arrays = path, meta, arrays

    @property
    def epoch(self) -> int:
        """Epochs finished (the 0-based epoch training continues with)."""
        return int(self.meta["epoch"])

    @property
    def batch(self) -> int:
        """Batches of ``epoch`` already trained."""
        return int(self.meta["batch"])

    def group(self, prefix: str) -> list[np.ndarray]:
        """The arrays stored as ``prefix/00000, prefix/00001, ...`` in order."""
        keys = sorted(k for k in self.arrays if k.rsplit("/", 1)[0] == prefix)
        return [self.arrays[k] for k in keys]

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, epoch={self.epoch}, batch={self.batch})"


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Reads and verifies one checkpoint file.

    Raises:
        CheckpointError: the file is truncated or damaged (zip structure or CRC-32
            of any entry), has no metadata, or has an unknown format version.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every entry and checks its CRC-32
        if bad is not None:
            raise CheckpointError(f"checkpoint {path} is damaged: entry {bad!r} fails its CRC-32 check")
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop(_META)))
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err})") from err
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}; this version of "
                              f"keras_effcnn reads format {FORMAT_VERSION}")
    return Checkpoint(path, meta, arrays)


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first (by training position)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(tuple(int(g) for g in m.groups()), p) for p in directory.iterdir() if (m := _NAME_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` that reads back intact.

    Damaged newer files are skipped with a warning (they are left on disk for
    inspection and overwritten by the resumed run).

    Returns:
        None when the directory holds no checkpoint files.

    Raises:
        CheckpointError: there are checkpoint files but every one is damaged.
    """
    errors = []
    for path in reversed(list_checkpoints(directory)):
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        for message in errors:
            warnings.warn(f"{message}; resuming from the previous checkpoint {path.name} instead", stacklevel=2)
        return ckpt
    if errors:
        raise CheckpointError(
            f"cannot resume: every checkpoint in {directory} is damaged:\n  " + "\n  ".join(errors)
            + f"\nDelete {directory} to start the run from scratch.")
    return None


def load_weights(model: keras.Model, checkpoint: "str | os.PathLike | Checkpoint") -> Checkpoint:
    """Sets ``model``'s variables (weights and BatchNorm statistics) to a checkpoint's.

    The optimizer and callback states are not touched: this is for evaluating or
    exporting the model as it was at that point of a run (a run stopped early, or
    the final epoch of a run whose script saved nothing else).

    Args:
        model: a built model of the same architecture as the run's.
        checkpoint: a checkpoint file, a folder of them (its newest intact one is used),
            a run's output folder holding such a ``checkpoints`` folder, or a :class:`Checkpoint`.

    Returns:
        The checkpoint that was loaded (``.epoch`` says how many epochs it had trained).

    Raises:
        CheckpointError: there is no checkpoint, it is damaged, or it belongs to another model.

    Example:

    ```python
    model = keras_effcnn.recipes.mnist_1500()
    ckpt = load_weights(model, "runs/mnist_1500/checkpoints")   # its newest epoch
    ```
    """
    if not isinstance(checkpoint, Checkpoint):
        path = Path(checkpoint)
        if path.is_dir():
            if not list_checkpoints(path) and (path / "checkpoints").is_dir():
                path = path / "checkpoints"  # a run's --out folder
            found = latest_checkpoint(path)
            if found is None:
                raise CheckpointError(f"no checkpoint files (ckpt-e*-b*.npz) in {path}")
            checkpoint = found
        else:
            checkpoint = read_checkpoint(path)
    _assign(model.variables, checkpoint.group("model"), "model", checkpoint.path)
    return checkpoint


# ----------------------------------------------------------------------------- callback state


def _pack_state(prefix: str, state: dict) -> tuple[dict, dict]:
    """Splits a ``get_state()`` dict into arrays and JSON values."""
    arrays, plain, lists = {}, {}, {}
    for key, value in state.items():
        if "/" in key:
            raise ValueError(f"state keys must not contain '/'; got {key!r} in {prefix}")
        if isinstance(value, np.ndarray):
            arrays[f"{prefix}/{key}"] = value
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
            lists[key] = len(value)
            for i, v in enumerate(value):
                arrays[f"{prefix}/{key}/{i:05d}"] = v
        else:
            json.dumps(value)  # fails early, with the offending value, if not serialisable
            plain[key] = value
    return arrays, {"plain": plain, "arrays": sorted(k for k in state if f"{prefix}/{k}" in arrays),
                    "lists": lists}


def _unpack_state(prefix: str, spec: dict, arrays: dict) -> dict:
    state = dict(spec["plain"])
    for key in spec["arrays"]:
        state[key] = arrays[f"{prefix}/{key}"]
    for key, n in spec["lists"].items():
        state[key] = [arrays[f"{prefix}/{key}/{i:05d}"] for i in range(n)]
    return state


def _is_stateful(callback: Any) -> bool:
    return callable(getattr(callback, "get_state", None)) and callable(getattr(callback, "set_state", None))


# ----------------------------------------------------------------------------- the callback


def _numpy(variables) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def _assign(variables, values: Sequence[np.ndarray], what: str, path: Path) -> None:
    variables = list(variables)
    shapes = [tuple(v.shape) for v in variables]
    saved = [tuple(a.shape) for a in values]
    if shapes != saved:
        first = next((i for i, (a, b) in enumerate(zip(shapes, saved)) if a != b), min(len(shapes), len(saved)))
        name = variables[first].path if first < len(variables) else "(none)"
        raise CheckpointError(
            f"checkpoint {path} does not match this run's {what}: it holds {len(saved)} {what} variables, "
            f"the run has {len(shapes)}; first difference at #{first} ({name}: run "
            f"{shapes[first] if first < len(shapes) else None}, checkpoint "
            f"{saved[first] if first < len(saved) else None}). It was written by a different model or "
            "recipe; use a new output directory or delete the old one.")
    for var, value in zip(variables, values):
        var.assign(value.astype(var.dtype) if value.dtype != np.dtype(var.dtype) else value)


def _is_writer() -> bool:
    """Process 0 writes checkpoints; in multi-process (JAX) training every process restores them."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    return True


def _history_value(value: Any) -> Any:
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None


@keras.saving.register_keras_serializable(package="keras_effcnn")
class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves the full training state and resumes from it, also mid-epoch.

    Put it **last** in the callback list: its epoch-end checkpoint must see the
    other callbacks' epoch-end updates (e.g. a new SWA snapshot), and on resume it
    restores their state after their own ``on_train_begin`` has reset it.

    Args:
        directory: folder for the checkpoint files (created on first save). Use
            one folder per run; it must not be shared with another run.
        save_every_steps: also save every this many trained batches (counted over
            the whole run), ``>= 1``; None saves at epoch ends only.
        keep: number of newest checkpoints kept, ``>= 2`` so a damaged newest file
            can fall back to the previous one.
        stateful: callbacks whose ``get_state()`` is saved into every checkpoint
            and passed back to ``set_state(state)`` on resume. A state is a dict of
            NumPy arrays, lists of NumPy arrays, and JSON-serialisable values.
        delete_on_end: remove the checkpoints when ``fit`` finishes. The default
            (False) keeps the final one, so re-running a finished command trains
            zero epochs and reproduces the finished model.
        verbose: ``1`` prints when a run resumes.

    Raises:
        CheckpointError: on resume, when every checkpoint is damaged or the
            newest readable one was written by a different model, optimizer or
            callback list.

    Example:
        >>> ckpt = ResumableCheckpoint("/tmp/run/checkpoints", save_every_steps=200)
        >>> # model.fit(train_ds, epochs=30, callbacks=[swa, ckpt]); kill; the same call resumes.
    """

    def __init__(self, directory: str | os.PathLike, save_every_steps: int | None = None, keep: int = 2,
                 stateful: Sequence[Any] = (), delete_on_end: bool = False, verbose: int = 1):
        super().__init__()
        if not str(directory):
            raise ValueError("`directory` must be a folder path; got an empty string.")
        if save_every_steps is not None and (isinstance(save_every_steps, bool)
                                             or not isinstance(save_every_steps, int) or save_every_steps < 1):
            raise ValueError(f"`save_every_steps` must be an integer >= 1 or None; got {save_every_steps!r}.")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 2:
            raise ValueError(f"`keep` must be an integer >= 2 (the previous checkpoint is the fallback "
                             f"for a damaged newest one); got {keep!r}.")
        for cb in stateful:
            if not _is_stateful(cb):
                raise ValueError(f"`stateful` callbacks must define get_state() and set_state(state); "
                                 f"{cb!r} does not.")
        self.directory = Path(directory)
        self.save_every_steps = save_every_steps
        self.keep = keep
        self.stateful = list(stateful)
        self.delete_on_end = bool(delete_on_end)
        self.verbose = verbose
        self.resumed_from: Checkpoint | None = None
        self._history: list[dict] = []
        self._original_train_function = None
        self._skip_calls = 0

    # -- public ------------------------------------------------------------------

    @property
    def history(self) -> dict[str, list[float]]:
        """Logs of every finished epoch of the run, including those before a restart."""
        out: dict[str, list[float]] = {}
        for logs in self._history:
            for key, value in logs.items():
                out.setdefault(key, []).append(value)
        return out

    # -- saving ------------------------------------------------------------------

    def _state_arrays(self, with_metrics: bool) -> tuple[dict, dict]:
        arrays: dict[str, np.ndarray] = {}
        groups = {"model": self.model.variables, "optimizer": self.model.optimizer.variables}
        if with_metrics:
            groups["metrics"] = self.model.metrics_variables
        for group, variables in groups.items():
            for i, value in enumerate(_numpy(variables)):
                arrays[f"{group}/{i:05d}"] = value
        callbacks = []
        for i, cb in enumerate(self.stateful):
            cb_arrays, spec = _pack_state(f"callback{i}", cb.get_state())
            arrays.update(cb_arrays)
            callbacks.append({"class": type(cb).__name__, **spec})
        return arrays, {"callbacks": callbacks, "metrics_saved": with_metrics}

    def _save(self, epoch: int, batch: int) -> None:
        if not _is_writer():
            return
        # JAX's fit trains a stateless copy of the variables and writes it back only at
        # epoch ends; a mid-epoch checkpoint asks for that write first.
        if batch and callable(getattr(self.model, "jax_state_sync", None)):
            self.model.jax_state_sync()
        arrays, extra = self._state_arrays(with_metrics=batch > 0)
        meta = {"format": FORMAT_VERSION, "epoch": epoch, "batch": batch, "global_step": self._global_step,
                "epochs": self.params.get("epochs"), "steps": self.params.get("steps"),
                "history": self._history, "keras_version": keras.__version__, **extra}
        path = write_checkpoint(self.directory / _NAME.format(epoch=epoch, batch=batch), arrays, meta)
        for old in list_checkpoints(self.directory)[:-self.keep]:
            if old != path:
                old.unlink(missing_ok=True)

    # -- restoring ---------------------------------------------------------------

    def _remove_stale_temporaries(self) -> None:
        if self.directory.is_dir() and _is_writer():
            for tmp in self.directory.glob(".ckpt-*.tmp"):
                tmp.unlink(missing_ok=True)

    def _restore(self, ckpt: Checkpoint) -> None:
        meta = ckpt.meta
        steps = self.params.get("steps")
        if meta.get("steps") and steps and meta["steps"] != steps:
            raise CheckpointError(
                f"checkpoint {ckpt.path} was written by a run with {meta['steps']} batches per epoch; this run has "
                f"{steps} (a different batch size, subset or dataset?). Resume with the original settings, "
                "or use a new output directory.")
        if meta.get("epochs") != self.params.get("epochs"):
            warnings.warn(f"resuming {ckpt.path.name}, written by a run of {meta.get('epochs')} epochs, in a run of "
                          f"{self.params.get('epochs')} epochs; schedules that depend on the run length will "
                          "not match the interrupted run.", stacklevel=3)
        saved_callbacks = [c["class"] for c in meta["callbacks"]]
        ours = [type(cb).__name__ for cb in self.stateful]
        if saved_callbacks != ours:
            raise CheckpointError(f"checkpoint {ckpt.path} holds the state of callbacks {saved_callbacks}; this "
                                  f"run has {ours}. Resume with the same callbacks, or use a new output directory.")
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        _assign(self.model.variables, ckpt.group("model"), "model", ckpt.path)
        _assign(optimizer.variables, ckpt.group("optimizer"), "optimizer", ckpt.path)
        for i, (cb, spec) in enumerate(zip(self.stateful, meta["callbacks"])):
            cb.set_state(_unpack_state(f"callback{i}", spec, ckpt.arrays))
        self._history = list(meta["history"])
        self._global_step = int(meta["global_step"])
        # Keras' own BackupAndRestore uses the same hook; fit() starts at this epoch.
        self.model._initial_epoch = ckpt.epoch
        if ckpt.batch:
            self._install_batch_skipper(ckpt.batch)

    def _install_batch_skipper(self, skip: int) -> None:
        """Makes the first ``skip`` steps of the resumed epoch draw their batch and not train.

        ``fit`` keeps calling ``model.train_function`` once per step (``steps_per_execution``
        batches); the wrapper draws those batches from the epoch's iterator and returns
        without training, so the first trained batch is the one after the checkpoint. The
        call signature is the backend's: ``(iterator)`` on TensorFlow, ``(state, iterator)``
        on JAX (the stateless state passes through unchanged), ``(batches)`` on PyTorch
        (already drawn by ``fit``).
        """
        per_call = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if skip % per_call:
            raise CheckpointError(f"the checkpoint is {skip} batches into an epoch, not a multiple of "
                                  f"steps_per_execution={per_call}")
        original = self.model.train_function
        remaining = [skip // per_call]
        backend = keras.backend.backend()

        def train_function(*args):
            if remaining[0] == 0:
                return original(*args)
            if backend in ("tensorflow", "jax"):
                iterator = args[-1]
                for _ in range(per_call):
                    next(iterator)  # the batch the interrupted run already trained on
            remaining[0] -= 1
            if remaining[0] == 0:
                self.model.train_function = original
            if backend == "jax":
                return {}, args[0]
            return self.model.get_metrics_result() if backend == "tensorflow" else {}

        self._skip_calls = skip // per_call
        self._original_train_function = original
        self.model.train_function = train_function

    def _restore_metrics(self, values: list[np.ndarray]) -> None:
        """Puts back the running metric totals of the interrupted epoch."""
        model = self.model
        if len(model.metrics_variables) != len(values):
            # Compiled metrics create their variables on the first update; one update on
            # dummy data creates them, and the assignment below overwrites its effect.
            try:
                y_pred = [keras.ops.zeros((1,) + tuple(t.shape[1:]), dtype="float32") for t in model.outputs]
                y_pred = y_pred[0] if len(y_pred) == 1 else y_pred
                model.compute_metrics(None, y_pred, y_pred, sample_weight=None)
            except Exception as err:  # noqa: BLE001 - any failure only loses the epoch's partial metrics
                warnings.warn(f"could not rebuild the metrics to restore the interrupted epoch's running "
                              f"totals ({err}); this epoch's training metrics cover the resumed part only.")
                return
        if len(model.metrics_variables) != len(values):
            warnings.warn("the metrics differ from the checkpoint's; this epoch's training metrics cover the "
                          "resumed part only.")
            return
        _assign(model.metrics_variables, values, "metrics", self.directory)

    # -- hooks ---------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._global_step = 0
        self._history = []
        self._epoch = 0
        self._skip_calls = 0
        self._pending_metrics: list[np.ndarray] | None = None
        self.resumed_from = None
        self._remove_stale_temporaries()
        ckpt = latest_checkpoint(self.directory)
        if ckpt is None:
            return
        self._restore(ckpt)
        self.resumed_from = ckpt
        if ckpt.batch and ckpt.meta.get("metrics_saved"):
            self._pending_metrics = ckpt.group("metrics")
        if self.verbose:
            where = f"epoch {ckpt.epoch + 1}" + (f", batch {ckpt.batch + 1}" if ckpt.batch else "")
            print(f"ResumableCheckpoint: resuming from {ckpt.path} at {where}")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._pending_metrics is not None:
            self._restore_metrics(self._pending_metrics)
            self._pending_metrics = None

    def on_train_batch_end(self, batch, logs=None):
        if self._skip_calls:
            self._skip_calls -= 1  # a batch of the resumed epoch that the interrupted run trained on
            return
        self._global_step += 1
        if self.save_every_steps and self._global_step % self.save_every_steps == 0:
            self._save(self._epoch, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._history.append({k: _history_value(v) for k, v in (logs or {}).items()})
        self._save(epoch + 1, 0)

    def on_train_end(self, logs=None):
        if self._original_train_function is not None:
            self.model.train_function = self._original_train_function
            self._original_train_function = None
        self.model._initial_epoch = None  # a later fit() on this model starts from its own initial_epoch
        if self.delete_on_end and _is_writer():
            for path in list_checkpoints(self.directory):
                path.unlink(missing_ok=True)

    def get_config(self) -> dict:
        return {"directory": str(self.directory), "save_every_steps": self.save_every_steps, "keep": self.keep,
                "delete_on_end": self.delete_on_end, "verbose": self.verbose}


def resume_callbacks(out_dir: str | os.PathLike, callbacks: Sequence[Any] = (), *,
                     save_every_steps: int | None = 100, keep: int = 2,
                     verbose: int = 1) -> list[keras.callbacks.Callback]:
    """The callbacks that make a run in ``out_dir`` resumable; append them **last**.

    Args:
        out_dir: the run's output folder; checkpoints go to ``out_dir/checkpoints``.
        callbacks: the run's other callbacks; those with ``get_state``/``set_state``
            have their state saved and restored too.
        save_every_steps: checkpoint every this many batches as well as at epoch ends.
        keep: checkpoints kept (>= 2).
        verbose: ``1`` prints when a run resumes.

    Returns:
        ``[ResumableCheckpoint(...)]``.

    Example:
        >>> cbs = [swa]  # doctest: +SKIP
        >>> cbs += resume_callbacks("runs/mnist", cbs)  # doctest: +SKIP
        >>> model.fit(train_ds, epochs=30, callbacks=cbs)  # doctest: +SKIP
    """
    stateful = [cb for cb in callbacks if _is_stateful(cb)]
    return [ResumableCheckpoint(Path(out_dir) / "checkpoints", save_every_steps=save_every_steps, keep=keep,
                                stateful=stateful, verbose=verbose)]


__all__ = ["ResumableCheckpoint", "resume_callbacks", "CheckpointError", "Checkpoint", "read_checkpoint",
           "write_checkpoint", "latest_checkpoint", "list_checkpoints", "load_weights", "FORMAT_VERSION"]

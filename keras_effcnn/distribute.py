"""Data-parallel training on the backend's own engine, one host or several.

No home-made engine: on TensorFlow the replicas are a ``tf.distribute.MirroredStrategy``,
on JAX a ``keras.distribution.DataParallel`` (GSPMD over a device mesh), and several
hosts are JAX processes joined by ``keras.distribution.initialize`` (which calls
``jax.distributed.initialize``). What stays the same on every engine:

* **The global batch** is the recipe's ``batch_size``; it is split over the replicas
  (and, across processes, each process reads only its shard of every batch).
* **Gradients are all-reduced**: one step equals the single-device step on the
  same global batch (to float tolerance). On JAX the step is one program over
  global arrays, so this includes BatchNorm, whose batch statistics are those of
  the global batch. On TensorFlow, ``BatchNormalization`` normalises each replica's
  batch with its own statistics unless built with ``synchronized=True``.
* **SAM's eps is global**: every replica perturbs the weights by the eps of the
  all-reduced gradient (``SAMModel`` all-reduces the first gradient on
  TensorFlow; on JAX it is global by construction). Per-replica eps - m-sharpness
  with ``m`` = the replica batch - is ``SAMModel(num_splits=<replicas>)``.
* **Checkpoints** are written by process 0 and read by every process (a shared
  folder on several hosts).

TensorFlow's ``MultiWorkerMirroredStrategy`` is not offered: with Keras 3 it is
reported broken (keras-team/keras#20585); see docs/backends.md for what was
measured here.

Example:

```python
from keras_effcnn import distribute, recipes

engine = distribute.data_parallel(devices=2)   # before anything runs on the backend
with engine.scope():                            # variables are created replicated
    model = recipes.build("mnist_1500")
recipes.fit(model, data_dir, distribution=engine)
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import keras

_BACKENDS = ("tensorflow", "jax")


@dataclasses.dataclass
class DataParallelEngine:
    """A configured data-parallel engine (from :func:`data_parallel`).

    Attributes:
        backend: ``"tensorflow"`` or ``"jax"``.
        engine: the backend object, a ``tf.distribute.MirroredStrategy`` or a
            ``keras.distribution.DataParallel``.
        num_replicas: replicas over all processes (devices of the mesh).
        num_processes: processes taking part (1 on one host).
        process_id: this process's index; process 0 writes checkpoints and results.
    """

    backend: str
    engine: Any
    num_replicas: int
    num_processes: int = 1
    process_id: int = 0

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints and results (process 0)."""
        return self.process_id == 0

    def scope(self):
        """Context manager to build, compile and train the model in.

        Example:
            >>> with engine.scope():  # doctest: +SKIP
            ...     model = recipes.build("mnist_1500")
        """
        return self.engine.scope()

    def check_model(self, model: keras.Model) -> None:
        """Raises a clear error when ``model`` was not built inside :meth:`scope`."""
        if self.backend == "tensorflow":
            ok = model.distribute_strategy is self.engine
        else:
            value = model.trainable_variables[0].value if model.trainable_variables else None
            ok = value is None or len(value.sharding.device_set) == self.num_replicas
        if not ok:
            raise ValueError(f"the model {model.name!r} was built outside the data-parallel engine; build it inside "
                             "`with engine.scope():` so its variables are created on every replica.")


def data_parallel(devices: int | None = None, *, coordinator: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None) -> DataParallelEngine:
    """Data-parallel training over ``devices`` devices of each process, on the active backend.

    Call it at the start of the process, before the backend has run anything: on
    a CPU-only host with fewer devices than asked, the host CPU is split into
    ``devices`` logical devices (replicas share the cores; useful for tests and to
    check a multi-device setup, not for speed).

    Args:
        devices: devices per process; None uses all of them.
        coordinator: ``HOST:PORT`` of process 0, for multi-process training (JAX
            backend only); every process is started with the same ``coordinator``
            and ``num_processes`` and its own ``process_id``.
        num_processes: processes taking part, ``>= 1``.
        process_id: this process's index, ``0 <= process_id < num_processes``.

    Returns:
        A :class:`DataParallelEngine`.

    Raises:
        ValueError: bad arguments, multi-process on TensorFlow, or the backend
            already started with fewer devices.
        NotImplementedError: the PyTorch backend.

    Example:
        >>> engine = data_parallel(devices=2)  # doctest: +SKIP
        >>> engine.num_replicas  # doctest: +SKIP
        2
    """
    backend = keras.backend.backend()
    if backend not in _BACKENDS:
        raise NotImplementedError(f"data-parallel training runs on the TensorFlow and JAX backends; the active backend "
                                  f"is {backend!r}. Set KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow.")
    if devices is not None and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
        raise ValueError(f"`devices` must be an integer >= 1 or None; got {devices!r}.")
    multi = coordinator is not None or (num_processes or 1) > 1
    if multi:
        if coordinator is None or num_processes is None or process_id is None:
            raise ValueError("multi-process training needs all of `coordinator` (HOST:PORT of process 0), "
                             f"`num_processes` and `process_id`; got coordinator={coordinator!r}, "
                             f"num_processes={num_processes!r}, process_id={process_id!r}.")
        if not (isinstance(num_processes, int) and num_processes >= 1
                and isinstance(process_id, int) and 0 <= process_id < num_processes):
            raise ValueError(f"need num_processes >= 1 and 0 <= process_id < num_processes; got "
                             f"num_processes={num_processes!r}, process_id={process_id!r}.")
        if backend != "jax":
            raise ValueError("multi-process training runs on the JAX backend (TensorFlow's MultiWorkerMirroredStrategy "
                             "does not work with Keras 3: keras-team/keras#20585); set KERAS_BACKEND=jax.")
    if backend == "tensorflow":
        return _mirrored(devices)
    return _jax_data_parallel(devices, coordinator if multi else None, num_processes or 1, process_id or 0)


def _mirrored(devices: int | None) -> DataParallelEngine:
    import tensorflow as tf

    accelerators = tf.config.list_physical_devices("GPU")
    if accelerators:
        names = [d.name.replace("/physical_device:", "/") for d in accelerators]
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        wanted = devices or 1
        try:  # before listing logical devices: listing starts the runtime
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * wanted)
        except RuntimeError as err:
            if len(tf.config.list_logical_devices("CPU")) < wanted:
                raise ValueError(f"cannot split the CPU into {wanted} logical devices after TensorFlow has started; "
                                 "call data_parallel() at the start of the process") from err
        names = [d.name for d in tf.config.list_logical_devices("CPU")]
    if devices is not None:
        if devices > len(names):
            raise ValueError(f"`devices`={devices} but only {len(names)} devices are available: {names}.")
        names = names[:devices]
    strategy = tf.distribute.MirroredStrategy(names)
    return DataParallelEngine("tensorflow", strategy, strategy.num_replicas_in_sync)


def _jax_data_parallel(devices: int | None, coordinator: str | None, num_processes: int,
                       process_id: int) -> DataParallelEngine:
    import jax

    if devices is not None and _no_accelerator():
        # One CPU becomes `devices` XLA host devices; only possible before JAX starts its backend.
        try:
            jax.config.update("jax_num_cpu_devices", devices)
        except RuntimeError as err:
            if len(jax.local_devices()) < devices:
                raise ValueError(f"cannot split the CPU into {devices} devices after JAX has started; call "
                                 "data_parallel() at the start of the process") from err
    if coordinator is not None:
        if _no_accelerator():
            # Cross-process collectives on CPU go through Gloo.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(coordinator, num_processes, process_id)
    local = jax.local_devices()
    if devices is not None and devices > len(local):
        raise ValueError(f"`devices`={devices} but only {len(local)} devices are available: {local}.")
    # Several processes: the mesh spans every process's devices (each has `devices` of them).
    chosen = jax.devices() if coordinator is not None else jax.devices()[:devices or None]
    distribution = _ProcessShardedDataParallel(devices=chosen)
    return DataParallelEngine("jax", distribution, len(chosen), jax.process_count(), jax.process_index())


class _ProcessShardedDataParallel(keras.distribution.DataParallel):
    """``DataParallel`` whose processes each read their slice of every global batch.

    Keras' own sharding (``tf.data`` rebatch and shard) needs a batch size it can
    read from the dataset's graph; this one slices every batch as it comes, so it
    works for any batched pipeline and keeps its order: process ``p`` of ``P``
    gets rows ``[p n/P, (p+1) n/P)`` of a batch of ``n`` (``n`` must divide by ``P``).
    """

    def distribute_dataset(self, dataset):
        import jax
        import tensorflow as tf

        count, index = jax.process_count(), jax.process_index()
        if count == 1:
            return dataset

        def local_rows(*batch):
            first = next(t for t in tf.nest.flatten(batch) if t is not None)
            n = tf.shape(first)[0]
            tf.debugging.assert_equal(n % count, 0, message=f"every batch must divide by the {count} processes")
            size = n // count
            part = tf.nest.map_structure(lambda t: t[index * size:(index + 1) * size], batch)
            return part if len(part) > 1 else part[0]

        return dataset.map(local_rows).prefetch(tf.data.AUTOTUNE)


def _no_accelerator() -> bool:
    # Reading the platform list from the environment does not start a JAX backend.
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0] == "cpu"
    import importlib.util

    return importlib.util.find_spec("jax_cuda12_plugin") is None and importlib.util.find_spec("libtpu") is None


def scope_of(distribution: DataParallelEngine | None):
    """``distribution.scope()``, or a no-op context without one."""
    return contextlib.nullcontext() if distribution is None else distribution.scope()


__all__ = ["DataParallelEngine", "data_parallel", "scope_of"]

"""Reproducible runs: one call seeds everything and makes TensorFlow deterministic.

What makes two runs differ, and what :func:`set_determinism` does about it:

* **Seeds.** Python's ``random``, NumPy's global generator, TensorFlow's global
  seed and Keras' ``SeedGenerator`` default all come from
  ``keras.utils.set_random_seed(seed)``: weight initialisation, dropout masks and
  ``tf.data`` shuffles with an op seed are then repeatable.
* **Kernels.** ``tf.config.experimental.enable_op_determinism()`` makes TF pick
  deterministic kernels (and raise for ops that have none) and makes ``tf.data``
  keep element order in parallel maps. On CPU it changes *which* kernels run, so
  results with and without it differ from each other, but each is repeatable.
* **Threads.** oneDNN and Eigen split reductions by the size of the thread pool,
  so results are only bit-identical for the same number of threads; pin them with
  ``threads=`` to reproduce a run on a machine with a different core count
  (measured in ``docs/reliability.md``). Threads can only be set before
  TensorFlow runs its first op.

Example:

```python
from keras_effcnn.determinism import set_determinism
set_determinism(0)          # before building the model and the data pipeline
```
"""

from __future__ import annotations


def set_determinism(seed: int, *, op_determinism: bool = True, threads: int | None = None) -> None:
    """Seeds every generator and makes TensorFlow's kernels deterministic.

    Call it once, at the start of the process, before any model or dataset is built.

    Args:
        seed: the seed for Python, NumPy, TensorFlow and Keras, an integer ``>= 0``.
        op_determinism: enable ``tf.config.experimental.enable_op_determinism()``.
        threads: if given, use exactly this many intra-op threads and one inter-op
            thread (``>= 1``), so results do not depend on the core count.

    Raises:
        ValueError: for a bad ``seed`` or ``threads``, or when ``threads`` is given
            after TensorFlow has already started its thread pools.

    Example:
        >>> set_determinism(123)
    """
    import keras

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0; got {seed!r}.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"`threads` must be an integer >= 1 or None; got {threads!r}.")
    if threads is not None or op_determinism:
        import tensorflow as tf

        if threads is not None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError as err:
                raise ValueError(f"`threads`={threads} must be set before TensorFlow runs its first op; call "
                                 f"set_determinism at the very start of the process ({err}).") from err
        if op_determinism:
            tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)


__all__ = ["set_determinism"]

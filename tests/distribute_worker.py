"""Subprocess side of tests/test_distribute.py (the device count is fixed when a backend starts).

``python distribute_worker.py step OUT``: one training step of SGD and of SAM on 2 devices
(data-parallel) and on one, same global batch; writes every result to ``OUT`` (.npz).

``python distribute_worker.py train OUT CKPT_DIR [COORDINATOR NUM_PROCESSES PROCESS_ID [DIE_AFTER]]``:
a short resumable run (ResumableCheckpoint in CKPT_DIR), data-parallel over processes when a
coordinator is given; ``DIE_AFTER`` makes process 1 exit hard after that many trained batches.
"""

from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _model(cls, bn: bool = True, **kwargs):
    import keras

    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3)(inputs)
    if bn:
        # TensorFlow replicas normalise with their own batch statistics unless synchronized;
        # JAX's data-parallel step is one program over the global batch (always global statistics).
        h = keras.layers.BatchNormalization(momentum=0.9, synchronized=keras.backend.backend() == "tensorflow")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return cls(inputs=inputs, outputs=keras.layers.Dense(4)(h), **kwargs)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 6, 2)).astype("float32"), np.eye(4, dtype="float32")[rng.integers(0, 4, n)]


def _compile(model):
    import keras

    # XLA (TensorFlow) cannot place MirroredStrategy's per-replica variables; JAX always compiles.
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), keras.losses.CategoricalCrossentropy(from_logits=True),
                  jit_compile=keras.backend.backend() == "jax")


def step(out):
    from keras_effcnn import distribute

    engine = distribute.data_parallel(devices=2)  # first: splits the CPU before the backend starts
    import keras

    from keras_effcnn.sam import SAMModel

    x, y = _data(8)
    results = {"replicas": np.array(engine.num_replicas)}
    for name, cls, kwargs in [("sgd", keras.Model, {}), ("sam", SAMModel, {"rho": 0.5, "adaptive": True}),
                              ("sam_split2", SAMModel, {"rho": 0.5, "adaptive": True, "num_splits": 2})]:
        keras.utils.set_random_seed(0)
        single = _model(cls, **kwargs)
        initial = single.get_weights()
        _compile(single)
        single.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        for i, w in enumerate(single.get_weights()):
            results[f"single_{name}/{i:02d}"] = w
        if name == "sam_split2":
            continue  # the m-sharpness variant is only compared with, not run data-parallel
        with engine.scope():
            parallel = _model(cls, **kwargs)
            parallel.set_weights(initial)
            engine.check_model(parallel)
            _compile(parallel)
            parallel.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        for i, w in enumerate(parallel.get_weights()):
            results[f"parallel_{name}/{i:02d}"] = w
    np.savez(out, **results)


def train(out, ckpt_dir, coordinator=None, num_processes=1, process_id=0, die_after=None):
    from keras_effcnn import distribute

    engine = None
    if coordinator is not None:
        engine = distribute.data_parallel(coordinator=coordinator, num_processes=num_processes, process_id=process_id)
    import keras
    import tensorflow as tf

    from keras_effcnn.callbacks.checkpoint import ResumableCheckpoint

    class DieAfter(keras.callbacks.Callback):
        trained = 0

        def on_train_batch_end(self, batch, logs=None):
            self.trained += 1
            if die_after is not None and process_id == 1 and self.trained == die_after:
                os._exit(3)  # as a SIGKILL would: no cleanup

    x, y = _data(64, seed=1)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)  # the global batch
    keras.utils.set_random_seed(0)
    with distribute.scope_of(engine):
        model = _model(keras.Model)
        _compile(model)
        ckpt = ResumableCheckpoint(ckpt_dir, save_every_steps=2, verbose=1)
        model.fit(ds, epochs=3, shuffle=False, verbose=0, callbacks=[DieAfter(), ckpt])
    np.savez(out, resumed=np.array(-1 if ckpt.resumed_from is None else ckpt.resumed_from.batch
                                   + 100 * ckpt.resumed_from.epoch), *model.get_weights())


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "step":
        step(*args)
    else:
        out, ckpt_dir, *multi = args
        if multi:
            coordinator, n, pid, *die = multi
            train(out, ckpt_dir, coordinator, int(n), int(pid), int(die[0]) if die else None)
        else:
            train(out, ckpt_dir)

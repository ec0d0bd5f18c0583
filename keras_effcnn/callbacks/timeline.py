"""Time-to-accuracy monitoring: test accuracy and training wall time after every epoch.

For reporting only ("how long until 86 %?"). Nothing reads these numbers to pick
an epoch or a checkpoint: the reported accuracy of a run is always its final epoch.
"""

from __future__ import annotations

import time

import keras


class TestTimeline(keras.callbacks.Callback):
    """Records ``{"epoch", "train_wall_s", "test_accuracy"}`` after each epoch.

    ``train_wall_s`` counts training time since the start of ``fit``, without the
    time spent in these evaluations. Not serialisable on purpose: it holds a
    dataset and belongs to one run.

    Args:
        test_data: a batched dataset of ``(images, one_hot_labels)``.

    Example:

    ```python
    timeline = TestTimeline(splits.test)
    model.fit(splits.train, epochs=10, callbacks=[timeline])
    timeline.records[-1]   # {'epoch': 10, 'train_wall_s': ..., 'test_accuracy': ...}
    ```
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, test_data):
        super().__init__()
        self.test_data = test_data
        self.records: list[dict] = []
        self._start = 0.0
        self._eval_time = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._eval_time = 0.0

    def on_epoch_end(self, epoch, logs=None):
        tick = time.perf_counter()
        train_wall = tick - self._start - self._eval_time
        metrics = self.model.evaluate(self.test_data, verbose=0, return_dict=True)
        self._eval_time += time.perf_counter() - tick
        self.records.append({"epoch": epoch + 1, "train_wall_s": round(train_wall, 2),
                             "test_accuracy": float(metrics["accuracy"])})

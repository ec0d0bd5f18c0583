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

    Resumable: ``get_state()``/``set_state()`` carry the records and the training
    time so far through a ``ResumableCheckpoint``, so a resumed run continues the
    timeline and its clock counts the time of every process (up to each one's last
    checkpoint: work redone after a kill is counted once).

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
        self._earlier = 0.0  # training seconds of the processes before a resume

    def _train_wall(self, now: float) -> float:
        return self._earlier + now - self._start - self._eval_time

    def get_state(self) -> dict:
        """``{"records": [...], "train_wall_s": training seconds so far}`` (JSON values)."""
        return {"records": [dict(r) for r in self.records], "train_wall_s": self._train_wall(time.perf_counter())}

    def set_state(self, state: dict) -> None:
        """Continues the timeline of ``state`` (from :meth:`get_state`) from now on."""
        self.records = [dict(r) for r in state["records"]]
        self._earlier = float(state["train_wall_s"])
        self._start = time.perf_counter()
        self._eval_time = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._eval_time = 0.0
        self._earlier = 0.0

    def on_epoch_end(self, epoch, logs=None):
        tick = time.perf_counter()
        train_wall = self._train_wall(tick)
        metrics = self.model.evaluate(self.test_data, verbose=0, return_dict=True)
        self._eval_time += time.perf_counter() - tick
        self.records.append({"epoch": epoch + 1, "train_wall_s": round(train_wall, 2),
                             "test_accuracy": float(metrics["accuracy"])})

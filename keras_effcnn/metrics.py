"""Accuracy on integer or one-hot labels, the metric of every recipe model."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["ClassificationAccuracy", "classification_accuracy"]


@keras.saving.register_keras_serializable(package="keras_effcnn")
def classification_accuracy(y_true, y_pred):
    """1 where ``argmax(y_pred)`` is the label; labels are class indices or one-hot/soft rows.

    Soft labels (Mixup) count the class of their largest weight, as
    ``keras.metrics.categorical_accuracy`` does.
    """
    from keras_effcnn.losses import to_one_hot

    target = ops.argmax(to_one_hot(y_true, y_pred), axis=-1)
    return ops.cast(ops.equal(target, ops.argmax(y_pred, axis=-1)), "float32")


@keras.saving.register_keras_serializable(package="keras_effcnn")
class ClassificationAccuracy(keras.metrics.MeanMetricWrapper):
    """Top-1 accuracy that takes class indices ``(N,)``/``(N, 1)`` and one-hot ``(N, K)`` labels.

    Args:
        name: metric name (``"accuracy"``, so histories read ``accuracy`` and ``val_accuracy``).
        dtype: the metric's dtype.

    Example:

    ```python
    metric = ClassificationAccuracy()
    metric.update_state([2, 0], [[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]])
    float(metric.result())  # 1.0
    ```
    """

    def __init__(self, name: str = "accuracy", dtype=None):
        super().__init__(fn=classification_accuracy, name=name, dtype=dtype)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype}

"""Classification loss that takes class indices and one-hot (or soft) labels alike.

``keras.datasets`` returns integer labels, ``keras_effcnn.data`` one-hot ones
(Mixup needs soft labels), and label smoothing is defined on one-hot targets:
:class:`ClassificationCrossentropy` one-hots integer labels inside the loss, so
a recipe model fits either without recompiling.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["ClassificationCrossentropy", "to_one_hot"]


def to_one_hot(y_true, y_pred):
    """``y_true`` as one-hot/soft targets shaped like ``y_pred`` ``(..., K)``.

    Integer labels of shape ``(...)`` or ``(..., 1)`` (``keras.datasets`` gives
    ``(N, 1)`` for CIFAR-10) are one-hot encoded with ``K = y_pred.shape[-1]``;
    targets already shaped like ``y_pred`` pass through.
    """
    num_classes = y_pred.shape[-1]
    rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if rank == pred_rank and y_true.shape[-1] == 1 and num_classes != 1:
        y_true = ops.squeeze(y_true, axis=-1)
        rank -= 1
    if rank == pred_rank - 1:
        return ops.one_hot(ops.cast(y_true, "int32"), num_classes, dtype=y_pred.dtype)
    if rank != pred_rank:
        raise ValueError(f"labels of shape {tuple(y_true.shape)} do not fit predictions of shape "
                         f"{tuple(y_pred.shape)}: pass class indices of shape (N,) or (N, 1), or one-hot "
                         f"labels of shape (N, {num_classes})")
    return ops.cast(y_true, y_pred.dtype)


@keras.saving.register_keras_serializable(package="keras_effcnn")
class ClassificationCrossentropy(keras.losses.CategoricalCrossentropy):
    """Categorical cross-entropy (with label smoothing) on integer or one-hot labels.

    The same arguments as ``keras.losses.CategoricalCrossentropy``; integer class
    indices are one-hot encoded first (see :func:`to_one_hot`), so label
    smoothing applies to them as well.

    Example:

    ```python
    loss = ClassificationCrossentropy(from_logits=True, label_smoothing=0.1)
    model.compile("sgd", loss=loss, metrics=[keras_effcnn.metrics.ClassificationAccuracy()])
    model.fit(x, y)          # y: (N,), (N, 1) or (N, num_classes)
    ```
    """

    def call(self, y_true, y_pred):
        return super().call(to_one_hot(y_true, y_pred), y_pred)

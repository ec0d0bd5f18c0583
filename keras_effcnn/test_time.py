"""Test-time augmentation: predict on the image and its horizontal mirror, average the outputs.

Horizontal flips are the augmentation of the CIFAR-10 recipes, so the mirrored image is
as natural to the model as the original one; averaging the two predictions costs a
second forward pass and no training. It is reported in its own column
(``benchmarks/time_to_accuracy.py``), never mixed into the headline accuracy, and it
is meaningless for digits (a mirrored "2" is not a "2").

Example:

```python
from keras_effcnn import test_time
acc = test_time.accuracy_with_flips(model, x_test, y_test)
```
"""

from __future__ import annotations

import numpy as np
from keras import ops


def predict_with_flips(model, images, batch_size: int = 500) -> np.ndarray:
    """The mean of ``model``'s outputs on ``images`` and on their horizontal mirrors.

    The outputs are averaged as they come (logits for the recipe models, whose
    argmax is then the class; probabilities for a ``classifier_activation="softmax"``
    model).

    Args:
        model: a Keras model taking ``(N, H, W, C)`` channels-last images.
        images: ``(N, H, W, C)`` array, already scaled as the model expects.
        batch_size: images per forward pass.

    Returns:
        ``(N, classes)`` NumPy array.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C); got shape {images.shape}")
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = ops.convert_to_tensor(images[start:start + batch_size])
        plain = model(batch, training=False)
        mirrored = model(ops.flip(batch, axis=2), training=False)
        outputs.append(ops.convert_to_numpy((plain + mirrored) / 2))
    return np.concatenate(outputs)


def accuracy_with_flips(model, images, labels, batch_size: int = 500) -> float:
    """Top-1 accuracy of :func:`predict_with_flips`.

    Args:
        model: as for :func:`predict_with_flips`.
        images: ``(N, H, W, C)`` array.
        labels: integer labels ``(N,)`` / ``(N, 1)``, or one-hot ``(N, classes)``.
        batch_size: images per forward pass.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    predicted = predict_with_flips(model, images, batch_size).argmax(axis=1)
    return float(np.mean(predicted == labels))

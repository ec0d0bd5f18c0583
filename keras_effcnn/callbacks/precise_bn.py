"""Precise BatchNorm statistics (Wu & Johnson, *Rethinking "Batch" in BatchNorm*, 2021, arXiv 2105.07576).

BatchNorm's moving averages follow the last few dozen batches (momentum 0.9
remembers about ten), so at the end of training they are a noisy estimate made
while the weights were still moving: two consecutive epochs with the same
near-zero learning rate can differ by tenths of a percent in test accuracy.
:func:`update_bn` replaces them with the exact statistics of a fixed pass over
training data under the final weights; :class:`PreciseBN` does that when
training ends (SWA does it after installing its averaged weights).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np


def trainable_batchnorm_layers(model: keras.Model) -> list:
    """Trainable BatchNormalization layers anywhere inside ``model`` (frozen ones
    run in inference mode and keep their statistics)."""
    # Keras has no public recursive layer walk; _flatten_layers is what Model.layers uses.
    layers = model._flatten_layers(include_self=False, recursive=True)
    return [
        layer
        for layer in layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable and layer.built
    ]


def _batch_size(x) -> tuple[int, tuple]:
    """Number of samples in a batch ``x`` (a tensor or a nest of tensors) and the
    per-sample shapes, which must stay the same across batches."""
    leaves = keras.tree.flatten(x)
    return int(leaves[0].shape[0]), tuple(tuple(leaf.shape[1:]) for leaf in leaves)


def update_bn(model: keras.Model, data, steps: int | None = None) -> int:
    """Recompute BatchNorm moving statistics as the exact statistics of ``data``.

    Every trainable ``BatchNormalization`` layer gets ``moving_mean`` and
    ``moving_variance`` = the per-channel mean and (biased) variance of all its
    inputs over the whole of ``data``, as if the batches were one: a ragged last
    batch counts in proportion to its size, and the variance includes the spread
    of the batch means (law of total variance). Upstream BatchNorm layers
    normalize with batch statistics during the pass, as they do in training (and
    as PyTorch's ``torch.optim.swa_utils.update_bn`` does; unlike PyTorch, which
    averages per-batch statistics with equal weights and stores unbiased
    variances, the result here is the pooled biased variance Keras normalizes
    with).

    Implementation: the layers' momentum is set to 0 for the pass, so after each
    forward pass their moving statistics *are* that batch's mean and biased
    variance. These are merged in float64 with Chan et al.'s parallel update
    (count, mean, sum of squared deviations), weighting each batch by its number
    of samples; every other BN variable (e.g. renorm state) is then restored.
    Weighting by samples is exact because every batch must have the same
    per-sample shape (so each sample contributes the same number of positions
    per channel); batches of different image sizes raise a ``ValueError``.

    Args:
        model: the model whose BatchNorm statistics to recompute.
        data: iterable of batches: ``x`` or tuples ``(x, y[, sample_weight])``,
            e.g. the training ``tf.data.Dataset`` (without Mixup, ideally).
        steps: use at most this many batches.

    Returns:
        The number of batches used (0 if the model has no trainable BatchNorm).

    Example:
        >>> # update_bn(model, train_ds.take(200))
    """
    bns = trainable_batchnorm_layers(model)
    if not bns:
        return 0
    saved_state = [[np.array(keras.ops.convert_to_numpy(v)) for v in bn.non_trainable_variables] for bn in bns]
    saved_momentum = [bn.momentum for bn in bns]
    # Per layer: running mean and running sum of squared deviations (M2), float64.
    moments = [
        [np.zeros(bn.moving_mean.shape, "float64"), np.zeros(bn.moving_variance.shape, "float64")]
        for bn in bns
    ]
    count = 0  # samples merged so far
    batches = 0
    sample_shapes = None
    try:
        for bn in bns:
            bn.momentum = 0.0

        def forward(x):
            model(x, training=True)
            return [(bn.moving_mean.value, bn.moving_variance.value) for bn in bns]

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # Traced after momentum was zeroed, so the graph uses momentum 0.
            forward = tf.function(forward, reduce_retracing=True)
        for batch in data:
            if steps is not None and batches >= steps:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            n, shapes = _batch_size(x)
            if sample_shapes is None:
                sample_shapes = shapes
            elif shapes != sample_shapes:
                raise ValueError(
                    f"update_bn: batch {batches} has per-sample shapes {shapes} but the first batch had "
                    f"{sample_shapes}; give batches of one input size (e.g. resize in the pipeline)."
                )
            if n == 0:
                continue
            total = count + n
            for acc, (mean, var) in zip(moments, forward(x)):
                mean = np.asarray(keras.ops.convert_to_numpy(mean), "float64")
                var = np.asarray(keras.ops.convert_to_numpy(var), "float64")
                delta = mean - acc[0]
                acc[0] += delta * (n / total)
                acc[1] += var * n + delta**2 * (count * n / total)
            count = total
            batches += 1
    finally:
        for bn, momentum, values in zip(bns, saved_momentum, saved_state):
            bn.momentum = momentum
            for var, value in zip(bn.non_trainable_variables, values):
                var.assign(value)
    if count == 0:
        warnings.warn("update_bn: `data` yielded no batch; BatchNorm statistics unchanged.")
        return 0
    for bn, (mean, m2) in zip(bns, moments):
        bn.moving_mean.assign(mean.astype(bn.moving_mean.dtype))
        variance = m2 / count
        bn.moving_variance.assign(variance.astype(bn.moving_variance.dtype))
        if getattr(bn, "renorm", False):
            # With renorm, moving_variance is derived from moving_stddev.
            bn.moving_stddev.assign(np.sqrt(variance + bn.epsilon).astype(bn.moving_stddev.dtype))
    return batches


class PreciseBN(keras.callbacks.Callback):
    """Recomputes the BatchNorm statistics with :func:`update_bn` at the end of the last epoch.

    It runs in ``on_epoch_end`` of the final epoch, before later callbacks (e.g. a
    ``TestTimeline`` placed after it) and before ``fit`` returns, so the final
    epoch's evaluation uses the precise statistics. Keras' own validation of that
    epoch runs before ``on_epoch_end`` and still sees the moving averages. The pass
    is part of training time. Not serialisable: it holds a dataset and belongs to
    one run.

    Args:
        data: training batches (``x`` or ``(x, y)``), ideally a fixed pass without
            Mixup, e.g. ``Splits.train_ordered``.
        steps: use at most this many batches (None: all of ``data``).

    Example:

    ```python
    model.fit(train, epochs=20, callbacks=[PreciseBN(train_ordered)])
    ```
    """

    def __init__(self, data, steps: int | None = None):
        super().__init__()
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1 or None; got {steps}")
        self.data = data
        self.steps = steps
        self.batches_used = 0

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.params.get("epochs"):
            self.batches_used = update_bn(self.model, self.data, self.steps)

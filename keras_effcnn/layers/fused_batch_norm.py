"""BatchNormalization whose training step runs as one fused kernel on TensorFlow.

Keras 3's ``BatchNormalization`` computes the batch moments and the
normalisation from separate ops (mean, squared difference, mean, rsqrt, ...),
each with its own gradient. On a CPU that costs ~3x TensorFlow's fused
batch-norm kernel, forward + backward (``benchmarks/results/levers.md``), and it
is the largest single cost of the small nets of this package.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="keras_effcnn")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with a fused training step on TensorFlow.

    The same layer, weights, arguments and results (to float rounding): in
    training, on the TensorFlow backend, for a 4-D channels-last ``float32``
    input without mask, renorm or synchronisation, the normalisation and its
    gradient run as TensorFlow's ``FusedBatchNormV3`` kernel, and the moving
    statistics are updated exactly as Keras does (the biased batch variance,
    ``moving = moving * momentum + batch * (1 - momentum)``). Inference and
    every other case run the base class, so exported ``.tflite`` graphs and
    other backends are unchanged.

    Args:
        **kwargs: the arguments of ``keras.layers.BatchNormalization``.

    Example:
        >>> import keras
        >>> from keras_effcnn.layers import FusedBatchNormalization
        >>> bn = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
        >>> tuple(bn(keras.ops.ones((2, 4, 4, 3)), training=True).shape)
        (2, 4, 4, 3)
    """

    def _fusable(self, inputs, training, mask) -> bool:
        return (
            training is True
            and self.trainable
            and mask is None
            and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) == "float32"
            and not self.renorm
            and not self.synchronized
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        # TensorFlow only from here on (checked by _fusable).
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones((channels,), inputs.dtype)
        offset = self.beta if self.center else tf.zeros((channels,), inputs.dtype)
        outputs, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=scale,
            offset=offset,
            mean=tf.zeros((0,), inputs.dtype),
            variance=tf.zeros((0,), inputs.dtype),
            epsilon=float(self.epsilon),
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the Bessel-corrected variance; Keras tracks the biased one.
        count = tf.cast(tf.size(inputs) // channels, inputs.dtype)
        variance = tf.where(count > 1, unbiased_variance * (count - 1) / count, tf.zeros_like(unbiased_variance))
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs

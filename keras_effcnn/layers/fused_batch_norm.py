"""BatchNormalization whose training step runs as one fused kernel on TensorFlow.

Keras 3's ``BatchNormalization`` computes the batch moments and the
normalisation from separate ops (mean, squared difference, mean, rsqrt, ...),
each with its own gradient. On a CPU that costs ~3x TensorFlow's fused
batch-norm kernel, forward + backward (``benchmarks/results/levers.md``), and it
is the largest single cost of the small nets of this package.
"""

from __future__ import annotations

import functools

import keras


@functools.cache
def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def fused_kernel_pays(channels: int) -> bool:
    """Whether TensorFlow's fused training kernel beats Keras' ops at this channel count.

    On CPU the fused kernel (oneDNN) is vectorised over channels: for a multiple of 4
    it is 1.2-4.8x faster than Keras' separate ops, but at other counts it falls off
    a cliff (24x24 maps at batch 256, forward + backward: 66 CPU-ms with 10 channels
    and 72 with 14, against 4.9 with 8 and 8.3 with 16), where Keras' ops are 2-4x
    faster (18 and 27 CPU-ms). Measured on this project's Intel Xeon machine
    (``benchmarks/results/levers.md``, "BatchNorm by channel count").
    On a GPU the fused (cuDNN) kernel is used at every count.

    Args:
        channels: the normalised axis' size.

    Returns:
        True where ``FusedBatchNormalization`` should train with the fused kernel.

    Example:
        >>> fused_kernel_pays(16), fused_kernel_pays(14)  # doctest: +SKIP (True on a GPU)
        (True, False)
    """
    return channels % 4 == 0 or _has_gpu()


@keras.saving.register_keras_serializable(package="keras_effcnn")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with a fused training step on TensorFlow.

    The same layer, weights, arguments and results (to float rounding): in
    training, on the TensorFlow backend, for a 4-D channels-last ``float32``
    input without mask, renorm or synchronisation, the normalisation and its
    gradient run as TensorFlow's ``FusedBatchNormV3`` kernel, and the moving
    statistics are updated exactly as Keras does (the biased batch variance,
    ``moving = moving * momentum + batch * (1 - momentum)``). Inference,
    channel counts where the fused CPU kernel is slower than Keras' ops
    (:func:`fused_kernel_pays`) and every other case run the base class, so
    exported ``.tflite`` graphs and other backends are unchanged.

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
            and fused_kernel_pays(int(inputs.shape[-1]))
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

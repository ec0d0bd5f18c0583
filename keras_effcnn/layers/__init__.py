"""Architecture building blocks: BlurPool, Squeeze-Excite, Conv-BN-act, depthwise-separable.

Every layer is channels-last, registered as ``keras_effcnn>ClassName`` for
``.keras`` saving, computes in the layer's dtype policy (``mixed_float16``
included) and exports to TFLite as builtin ops.
"""

from keras_effcnn.layers.blurpool import BlurPool2D, binomial_kernel, blur_max_pool
from keras_effcnn.layers.conv_bn_act import ConvBNAct
from keras_effcnn.layers.depthwise_separable import DepthwiseSeparableBlock
from keras_effcnn.layers.fused_batch_norm import FusedBatchNormalization
from keras_effcnn.layers.squeeze_excite import SqueezeExcite, latent_channels_for

__all__ = [
    "BlurPool2D",
    "ConvBNAct",
    "DepthwiseSeparableBlock",
    "FusedBatchNormalization",
    "SqueezeExcite",
    "binomial_kernel",
    "blur_max_pool",
    "latent_channels_for",
]

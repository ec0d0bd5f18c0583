"""The model zoo: a registry of CNN builders that share one signature.

Every builder is called as ``builder(input_shape=None, num_classes=10, **options)``
and returns an uncompiled functional ``keras.Model`` whose first layer normalises
``[0, 1]`` pixels with the dataset's fixed mean and standard deviation (so an
exported ``.tflite`` file takes plain ``[0, 1]`` images).

Two families live here:

* faithful ports of the paper's networks (``paper_mnist``, ``paper_cifar10``),
  built from plain Keras layers in the paper's order (conv -> ReLU -> BN);
* our own networks within the budgets (``effcnn_mnist`` <= 1,500 parameters,
  ``effcnn_cifar10`` <= 140,000 parameters), built from the package's
  ``BlurPool2D``, ``SqueezeExcite`` and ``DepthwiseSeparableBlock`` layers with
  a global-average-pooling head.

"Parameters" means trainable parameters, the PyTorch convention the paper uses
(BatchNorm moving statistics are buffers that fold into convolutions on export);
:func:`count_params` reports both numbers.

Example:

```python
from keras_effcnn import models
model = models.build("effcnn_mnist")
models.count_params(model)   # {'trainable': ..., 'non_trainable': ..., 'total': ...}
models.count_macs(model)     # multiply-accumulates per image
```
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import keras
from keras import layers

from keras_effcnn.layers import BlurPool2D, ConvBNAct, DepthwiseSeparableBlock, SqueezeExcite

# Per-channel statistics of the training sets in [0, 1] units (see data.py / the data README).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# Input statistics per dataset, used to default the normalisation layer.
DATASET_STATS = {
    "mnist": ((28, 28, 1), MNIST_MEAN, MNIST_STD),
    "fashion_mnist": ((28, 28, 1), (0.2860,), (0.3530,)),
    "cifar10": ((32, 32, 3), CIFAR10_MEAN, CIFAR10_STD),
}

Builder = Callable[..., keras.Model]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered builder and what it is for."""

    name: str
    builder: Builder
    dataset: str
    description: str
    paper_params: int | None = None

    def build(self, input_shape: Sequence[int] | None = None, num_classes: int = 10, **options) -> keras.Model:
        return self.builder(input_shape=input_shape, num_classes=num_classes, **options)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, dataset: str, description: str, paper_params: int | None = None):
    """Decorator adding a builder to the zoo under ``name``."""

    def wrap(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, fn, dataset, description, paper_params)
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of every registered builder, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}") from None


def build(name: str, input_shape: Sequence[int] | None = None, num_classes: int = 10, **options) -> keras.Model:
    """Builds the registered model ``name`` (see :func:`list_models`)."""
    return get_spec(name).build(input_shape=input_shape, num_classes=num_classes, **options)


# ----------------------------------------------------------------------------- helpers


def _input(dataset: str, input_shape: Sequence[int] | None, num_classes: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    default_shape, mean, std = DATASET_STATS[dataset]
    shape = tuple(default_shape if input_shape is None else input_shape)
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"input_shape must be (height, width, channels) with positive sizes; got {input_shape!r}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes!r}")
    channels = shape[-1]
    if channels != len(mean):
        # A different channel count (e.g. grayscale CIFAR) gets the mean statistics of all channels.
        mean = (sum(mean) / len(mean),) * channels
        std = (sum(std) / len(std),) * channels
    inputs = keras.Input(shape, name="image")
    x = layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="normalize")(inputs)
    return inputs, x


def _blur_downsample(x, name: str, blur: bool, filter_size: int = 3):
    """Max-pool by 2; with ``blur``, Zhang's BlurMaxPool (dense max, then blurred subsampling)."""
    if not blur:
        return layers.MaxPooling2D(2, name=f"{name}_maxpool")(x)
    x = layers.MaxPooling2D(2, strides=1, padding="same", name=f"{name}_maxpool")(x)
    return BlurPool2D(filter_size=filter_size, strides=2, name=f"{name}_blurpool")(x)


def _paper_conv(x, filters: int, kernel: int, name: str, *, depthwise: bool = False, padding: str = "valid",
                dilation: int = 1, strides: int = 1, dropout: float = 0.0, bn: bool = True, bn_momentum: float = 0.9):
    """The paper's unit: conv (optionally DW + PW) -> ReLU -> BN -> dropout, no biases."""
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides=strides, padding=padding, dilation_rate=dilation,
                                   use_bias=False, name=f"{name}_dw")(x)
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, dilation_rate=dilation,
                          use_bias=False, name=f"{name}_conv")(x)
    if bn:
        x = layers.ReLU(name=f"{name}_relu")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


# ----------------------------------------------------------------------------- paper ports


@register_model(
    "paper_mnist",
    dataset="mnist",
    description="Port of the paper's 1.5K MNIST net: DW-separable convs, 1x1 transitions, GAP head, conv->ReLU->BN.",
    paper_params=1560,
)
def paper_mnist(input_shape=None, num_classes: int = 10, *, depthwise: bool = True, gap_head: bool = True,
                blurpool: bool = False, blur_filter_size: int = 3, dropout: float = 0.05,
                head_dropout: float = 0.17, bn_momentum: float = 0.9) -> keras.Model:
    """The paper's MNIST network (1,560 parameters in PyTorch; the same here).

    Layout: 3x3 conv 1->8 (valid); DW 3x3 + PW 8->12; 1x1 12->8 + max-pool; DW+PW 8->12;
    DW+PW 12->16; 1x1 16->12 + max-pool; DW 3x3 (same) + PW 12->15; GAP -> 10. Every
    unit is conv -> ReLU -> BN without biases; the 1x1 transitions have no BN, which
    is what makes the paper's count 1,560.

    The phase switches rebuild the paper's earlier phases: ``depthwise=False`` uses
    full 3x3 convolutions, ``gap_head=False`` flattens into a dense classifier
    instead of global average pooling, ``blurpool=True`` anti-aliases both max-pools.
    """
    inputs, x = _input("mnist", input_shape, num_classes)
    kw = dict(bn_momentum=bn_momentum, dropout=dropout)
    x = _paper_conv(x, 8, 3, "c1", **kw)
    x = _paper_conv(x, 12, 3, "c2", depthwise=depthwise, **kw)
    x = layers.Conv2D(8, 1, use_bias=False, name="t1_conv")(x)
    x = _blur_downsample(x, "t1", blurpool, blur_filter_size)
    x = _paper_conv(x, 12, 3, "c3", depthwise=depthwise, **kw)
    x = _paper_conv(x, 16, 3, "c4", depthwise=depthwise, **kw)
    x = layers.Conv2D(12, 1, use_bias=False, name="t2_conv")(x)
    x = _blur_downsample(x, "t2", blurpool, blur_filter_size)
    x = _paper_conv(x, 15, 3, "c5", depthwise=depthwise, padding="same", bn_momentum=bn_momentum)
    if gap_head:
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
    if head_dropout:
        x = layers.Dropout(head_dropout, name="head_drop")(x)
    outputs = layers.Dense(num_classes, use_bias=False, name="logits")(x)
    return keras.Model(inputs, outputs, name="paper_mnist")


@register_model(
    "paper_cifar10",
    dataset="cifar10",
    description="Reconstruction of the paper's ~143K CIFAR-10 net: residual 3x3 and DW-separable convs 16->32->64, "
    "a dilated 3x3, DW+PW to 128/192/260, GAP -> 1x1 conv to 10.",
    paper_params=143_396,
)
def paper_cifar10(input_shape=None, num_classes: int = 10, *, dropout: float = 0.05,
                  bn_momentum: float = 0.9) -> keras.Model:
    """The paper's CIFAR-10 network, rebuilt from its description.

    The stages follow the paper: residual blocks of 3x3 and depthwise-separable
    convolutions widening 16 -> 32 -> 64, a dilated 3x3 convolution that replaces a
    pooling layer, depthwise-separable convolutions widening to 128, 192 and 260
    channels, global average pooling and a 1x1 convolution to the classes. Units are
    conv -> ReLU -> BN as in the paper. The exact per-layer widths of the original are
    not all given, so the count differs slightly from the paper's 143,396: 143,018
    here (see ``count_params``).
    """
    inputs, x = _input("cifar10", input_shape, num_classes)
    kw = dict(bn_momentum=bn_momentum, dropout=dropout, padding="same")
    x = _paper_conv(x, 16, 3, "c1", **kw)
    r = _paper_conv(x, 16, 3, "c2", **kw)
    x = layers.Add(name="c2_add")([x, r])
    x = _paper_conv(x, 32, 3, "c3", **kw)
    r = _paper_conv(x, 32, 3, "c4", depthwise=True, **kw)
    x = layers.Add(name="c4_add")([x, r])
    x = _paper_conv(x, 64, 3, "c5", depthwise=True, strides=2, **kw)  # 16x16
    r = _paper_conv(x, 64, 3, "c6", depthwise=True, **kw)
    x = layers.Add(name="c6_add")([x, r])
    x = _paper_conv(x, 64, 3, "c7", dilation=2, **kw)  # dilated 3x3: wide receptive field, no pooling
    x = _paper_conv(x, 128, 3, "c8", depthwise=True, strides=2, **kw)  # 8x8
    x = _paper_conv(x, 192, 3, "c9", depthwise=True, strides=2, **kw)  # 4x4
    x = _paper_conv(x, 260, 3, "c10", depthwise=True, **kw)
    x = layers.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    outputs = layers.Flatten(name="logits")(x)
    return keras.Model(inputs, outputs, name="paper_cifar10")


# ----------------------------------------------------------------------------- our networks


@register_model(
    "effcnn_mnist",
    dataset="mnist",
    description="Our <=1,500-parameter MNIST net: conv->BN->ReLU, DW-separable blocks, BlurMaxPool, GAP head.",
)
def effcnn_mnist(input_shape=None, num_classes: int = 10, *, blurpool: bool = True, blur_filter_size: int = 3,
                 se_ratio: float | None = None,
                 widths: Sequence[int] = (8, 12, 12, 14, 16), dropout: float = 0.0,
                 bn_momentum: float = 0.9) -> keras.Model:
    """An MNIST network under 1,500 parameters.

    Compared with the paper's port it drops the 1x1 transition convolutions (their
    parameters buy more as wider depthwise blocks), puts BN before ReLU, and
    downsamples with BlurMaxPool. Layout for ``widths=(a, b, c, d, e)``: 3x3 conv
    1->a (valid); DW-sep a->b (valid); BlurMaxPool; DW-sep b->c (valid); DW-sep c->d
    (valid); BlurMaxPool; DW-sep d->e (same); GAP -> dense to classes (no bias).
    """
    if len(widths) != 5:
        raise ValueError(f"widths must list 5 channel counts; got {widths!r}")
    inputs, x = _input("mnist", input_shape, num_classes)
    block = dict(bn_momentum=bn_momentum, dropout=dropout, se_ratio=se_ratio)
    a, b, c, d, e = widths
    x = ConvBNAct(a, 3, padding="valid", bn_momentum=bn_momentum, dropout=dropout, name="stem")(x)
    x = DepthwiseSeparableBlock(b, 3, padding="valid", name="b1", **block)(x)
    x = _blur_downsample(x, "down1", blurpool, blur_filter_size)
    x = DepthwiseSeparableBlock(c, 3, padding="valid", name="b2", **block)(x)
    x = DepthwiseSeparableBlock(d, 3, padding="valid", name="b3", **block)(x)
    x = _blur_downsample(x, "down2", blurpool, blur_filter_size)
    x = DepthwiseSeparableBlock(e, 3, padding="same", name="b4", **block)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, use_bias=False, name="logits")(x)
    return keras.Model(inputs, outputs, name="effcnn_mnist")


@register_model(
    "effcnn_cifar10",
    dataset="cifar10",
    description="Our <=140K-parameter CIFAR-10 net: 3x3 convs, residual DW-separable blocks, SE, BlurMaxPool, GAP head.",
)
def effcnn_cifar10(input_shape=None, num_classes: int = 10, *, blurpool: bool = True, blur_filter_size: int = 3,
                   se_ratio: float | None = 0.0625,
                   se_gate: str = "sigmoid", widths: Sequence[int] = (32, 64, 128, 192), dropout: float = 0.0,
                   head_dropout: float = 0.1, bn_momentum: float = 0.9) -> keras.Model:
    """A CIFAR-10 network under 140,000 parameters.

    One 3x3 convolution at full resolution, then three stages at 16, 8 and 4 pixels
    separated by BlurMaxPool. A full 3x3 convolution opens stage 2 (cheap in
    parameters where channels are few, and the best feature extractor there);
    everything after it is depthwise-separable, with residual blocks, a dilated
    block at 8x8 for receptive field, and squeeze-and-excitation in the two deepest
    stages. Doing the 32x32 work with one layer instead of two halves the
    multiply-accumulates (and the CPU time per epoch) for a small cost in accuracy.
    """
    if len(widths) != 4:
        raise ValueError(f"widths must list 4 channel counts; got {widths!r}")
    w1, w2, w3, w4 = widths
    inputs, x = _input("cifar10", input_shape, num_classes)
    block = dict(bn_momentum=bn_momentum, dropout=dropout)
    se = dict(se_ratio=se_ratio, se_gate=se_gate)
    x = ConvBNAct(w1, 3, name="stem", **block)(x)
    x = _blur_downsample(x, "down1", blurpool, blur_filter_size)
    x = ConvBNAct(w2, 3, name="s2_conv", **block)(x)
    x = DepthwiseSeparableBlock(w2, 3, residual=True, name="s2_block1", **block)(x)
    x = DepthwiseSeparableBlock(w2, 3, residual=True, name="s2_block2", **block)(x)
    x = _blur_downsample(x, "down2", blurpool, blur_filter_size)
    x = DepthwiseSeparableBlock(w3, 3, name="s3_expand", **block)(x)
    x = DepthwiseSeparableBlock(w3, 3, dilation_rate=2, residual=True, name="s3_dilated", **block, **se)(x)
    x = _blur_downsample(x, "down3", blurpool, blur_filter_size)
    x = DepthwiseSeparableBlock(w4, 3, name="s4_expand", **block)(x)
    x = DepthwiseSeparableBlock(w4, 3, residual=True, name="s4_block", **block, **se)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if head_dropout:
        x = layers.Dropout(head_dropout, name="head_drop")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="effcnn_cifar10")


# ----------------------------------------------------------------------------- accounting


def count_params(model: keras.Model) -> dict[str, int]:
    """Trainable (the paper's "parameters"), non-trainable (BN buffers) and total counts."""
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    non_trainable = sum(int(keras.ops.size(w)) for w in model.non_trainable_weights)
    return {"trainable": trainable, "non_trainable": non_trainable, "total": trainable + non_trainable}


_MAC_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2")


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates per image of the inference graph.

    Counts convolutions (dense, grouped, depthwise, dilated) and matrix products,
    the usual convention: BatchNorm folds into the convolutions, activations and
    element-wise products are not counted. The graph is traced with TensorFlow at
    batch size 1, so custom layers are counted by what they actually compute
    (e.g. BlurPool's fixed depthwise blur).
    """
    import tensorflow as tf

    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    macs = 0
    for op in graph.get_operations():
        if op.type not in _MAC_OPS:
            continue
        out = op.outputs[0].shape.as_list()
        if op.type == "Conv2D":
            kh, kw, cin_per_group, _ = op.inputs[1].shape.as_list()
            macs += _prod(out) * kh * kw * cin_per_group
        elif op.type == "DepthwiseConv2dNative":
            kh, kw, _, _ = op.inputs[1].shape.as_list()
            macs += _prod(out) * kh * kw
        else:
            a = op.inputs[0].shape.as_list()
            transposed = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
            inner = a[-2] if transposed else a[-1]
            macs += _prod(out) * inner
    return int(macs)


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def summary_table(names: Sequence[str] | None = None) -> list[dict]:
    """Parameters and MACs of every registered builder (default options)."""
    rows = []
    for name in names or list_models():
        spec = get_spec(name)
        model = spec.build()
        rows.append({"model": name, "dataset": spec.dataset, **count_params(model), "macs": count_macs(model),
                     "paper_params": spec.paper_params})
    return rows

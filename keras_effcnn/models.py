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
import logging
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import keras
from keras import layers

from keras_effcnn import presets
from keras_effcnn.layers import BlurPool2D, ConvBNAct, DepthwiseSeparableBlock
from keras_effcnn.layers._validation import check, check_choice, check_int, resolve_activation
from keras_effcnn.layers.conv_bn_act import apply_norm_act, make_norm_act

logger = logging.getLogger("keras_effcnn")

POOLINGS = (None, "avg", "max")

Builder = Callable[..., keras.Model]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered builder and what it is for."""

    name: str
    builder: Builder
    dataset: str
    description: str
    paper_params: int | None = None

    def build(self, input_shape: Sequence[int] | None = None, num_classes: int | None = None, **options) -> keras.Model:
        return build(self.name, input_shape=input_shape, num_classes=num_classes, **options)


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
    check(name in _REGISTRY, "model", name, f"one of {list_models()}")
    return _REGISTRY[name]


def build(name: str, input_shape: Sequence[int] | None = None, num_classes: int | None = None, *,
          classes: int | None = None, weights: str | os.PathLike | None = None, **options) -> keras.Model:
    """Builds the registered model ``name`` (see :func:`list_models`), as ``keras.applications`` do.

    Args:
        name: a zoo builder name.
        input_shape: ``(height, width, channels)``; default the dataset's. Spatial
            sizes may be ``None`` for networks with a global-pooling head.
        num_classes: classes of the head (default 10); ``classes`` is an alias.
        weights: None, a preset name or alias (``"mnist"``, ``"cifar10"``, see
            ``keras_effcnn.presets``) or a ``.weights.h5`` / ``.keras`` path. With a
            different head (``num_classes``, ``include_top``) the trunk loads and
            the head starts fresh, which is logged.
        **options: the builder's own options, and ``include_top``, ``pooling``,
            ``classifier_activation`` (see :func:`effcnn_cifar10`).

    Example:

    ```python
    model = build("effcnn_cifar10", num_classes=5, weights="cifar10")   # trunk pretrained, new head
    ```
    """
    spec = get_spec(name)
    num_classes = resolve_num_classes(num_classes, classes)
    model = spec.builder(input_shape=input_shape, num_classes=num_classes, **options)
    if weights is not None:
        load_weights(model, weights, builder=name, options=options)
    return model


def resolve_num_classes(num_classes: int | None, classes: int | None, default: int = 10) -> int:
    """``num_classes`` or its keras.applications alias ``classes`` (they must agree)."""
    if num_classes is not None and classes is not None and num_classes != classes:
        raise ValueError(f"`num_classes`={num_classes} and its alias `classes`={classes} disagree; pass one of them.")
    value = num_classes if num_classes is not None else classes if classes is not None else default
    return check_int("num_classes", value, 2)


# ----------------------------------------------------------------------------- helpers


def _input(dataset: str, input_shape: Sequence[int] | None, num_classes: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    spec = presets.get_dataset(dataset)
    mean, std = spec.mean, spec.std
    shape = tuple(spec.input_shape if input_shape is None else input_shape)
    check(len(shape) == 3 and all(s is None or (isinstance(s, int) and s >= 1) for s in shape[:2])
          and isinstance(shape[-1], int) and shape[-1] >= 1, "input_shape", input_shape,
          "(height, width, channels) with positive sizes (height and width may be None)")
    check_int("num_classes", num_classes, 2)
    channels = shape[-1]
    if channels != len(mean):
        # A different channel count (e.g. grayscale CIFAR) gets the mean statistics of all channels.
        mean = (sum(mean) / len(mean),) * channels
        std = (sum(std) / len(std),) * channels
    inputs = keras.Input(shape, name="image")
    x = layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="normalize")(inputs)
    return inputs, x


def _finish(inputs, x, name: str, top: Callable, *, include_top: bool, pooling: str | None,
            classifier_activation: str | None) -> keras.Model:
    """The model from its trunk output ``x``: with ``top`` (the classifier) or as a feature extractor."""
    check_choice("pooling", pooling, POOLINGS)
    if include_top:
        check(pooling is None, "pooling", pooling, "None when include_top=True (the head pools itself)")
        x = top(x)
        if classifier_activation is not None:
            # A separate weightless layer keeps the classifier's weights (and the shipped files) unchanged.
            x = layers.Activation(classifier_activation, name="predictions")(x)
    else:
        check(classifier_activation is None, "classifier_activation", classifier_activation,
              "None when include_top=False (there is no classifier)")
        if pooling == "avg":
            x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        elif pooling == "max":
            x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name)


def _blur_downsample(x, name: str, blur: bool, filter_size: int = 3, padding: str = "reflect"):
    """Max-pool by 2; with ``blur``, BlurMaxPool (dense max, then ``BlurPool2D``'s blurred subsampling).

    Not ``layers.blur_max_pool``: that one is Zhang's exact form (a ``"valid"`` stride-1
    max-pool, wrapped in a ``Sequential``), while the shipped weights were trained with a
    ``"same"`` max-pool, which differs on the last row and column; the two named layers here
    keep the shipped models' structure and outputs. The blur itself is the one ``BlurPool2D``.
    """
    if not blur:
        return layers.MaxPooling2D(2, name=f"{name}_maxpool")(x)
    x = layers.MaxPooling2D(2, strides=1, padding="same", name=f"{name}_maxpool")(x)
    return BlurPool2D(filter_size=filter_size, strides=2, padding=padding, name=f"{name}_blurpool")(x)


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
def paper_mnist(input_shape=None, num_classes: int = 10, *, include_top: bool = True, pooling: str | None = None,
                classifier_activation: str | None = None, depthwise: bool = True, gap_head: bool = True,
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
    ``include_top``, ``pooling`` and ``classifier_activation`` are as for
    :func:`effcnn_cifar10`.
    """
    if not gap_head:
        check(input_shape is None or None not in tuple(input_shape)[:2], "input_shape", input_shape,
              "fully known with gap_head=False (a flatten head fixes the image size)")
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

    def top(x):
        x = layers.GlobalAveragePooling2D(name="gap")(x) if gap_head else layers.Flatten(name="flatten")(x)
        if head_dropout:
            x = layers.Dropout(head_dropout, name="head_drop")(x)
        return layers.Dense(num_classes, use_bias=False, name="logits")(x)

    return _finish(inputs, x, "paper_mnist", top, include_top=include_top, pooling=pooling,
                   classifier_activation=classifier_activation)


@register_model(
    "paper_cifar10",
    dataset="cifar10",
    description="Reconstruction of the paper's ~143K CIFAR-10 net: residual 3x3 and DW-separable convs 16->32->64, "
    "a dilated 3x3, DW+PW to 128/192/260, GAP -> 1x1 conv to 10.",
    paper_params=143_396,
)
def paper_cifar10(input_shape=None, num_classes: int = 10, *, include_top: bool = True, pooling: str | None = None,
                  classifier_activation: str | None = None, dropout: float = 0.05,
                  bn_momentum: float = 0.9) -> keras.Model:
    """The paper's CIFAR-10 network, rebuilt from its description.

    The stages follow the paper: residual blocks of 3x3 and depthwise-separable
    convolutions widening 16 -> 32 -> 64, a dilated 3x3 convolution that replaces a
    pooling layer, depthwise-separable convolutions widening to 128, 192 and 260
    channels, global average pooling and a 1x1 convolution to the classes. Units are
    conv -> ReLU -> BN as in the paper. The exact per-layer widths of the original are
    not all given, so the count differs slightly from the paper's 143,396: 143,018
    here (see ``count_params``). ``include_top``, ``pooling`` and
    ``classifier_activation`` are as for :func:`effcnn_cifar10`.
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

    def top(x):
        x = layers.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
        x = layers.Conv2D(num_classes, 1, name="classifier")(x)
        return layers.Flatten(name="logits")(x)

    return _finish(inputs, x, "paper_cifar10", top, include_top=include_top, pooling=pooling,
                   classifier_activation=classifier_activation)


# ----------------------------------------------------------------------------- our networks


@register_model(
    "effcnn_mnist",
    dataset="mnist",
    description="Our <=1,500-parameter MNIST net: conv->BN->ReLU, DW-separable blocks, BlurMaxPool, GAP head.",
)
def effcnn_mnist(input_shape=None, num_classes: int = 10, *, include_top: bool = True, pooling: str | None = None,
                 classifier_activation: str | None = None, blurpool: bool = True, blur_filter_size: int = 3,
                 blur_padding: str = "reflect", se_ratio: float | None = None,
                 widths: Sequence[int] = (8, 12, 12, 14, 16), dropout: float = 0.0,
                 bn_momentum: float = 0.9, half_resolution: bool = False, bn_scale: bool = True,
                 activation: str = "relu", head: str = "dense") -> keras.Model:
    """An MNIST network under 1,500 parameters.

    Compared with the paper's port it drops the 1x1 transition convolutions (their
    parameters buy more as wider depthwise blocks), puts BN before ReLU, and
    downsamples with BlurMaxPool. Layout for ``widths=(a, b, c, d, e)``: 3x3 conv
    1->a (valid); DW-sep a->b (valid); BlurMaxPool; DW-sep b->c (valid); DW-sep c->d
    (valid); BlurMaxPool; DW-sep d->e (same); GAP -> dense to classes (no bias).
    ``include_top``, ``pooling``, ``classifier_activation`` and ``blur_padding`` are
    as for :func:`effcnn_cifar10`.

    ``half_resolution=True`` runs the same layers on a 14x14 image: the input is
    blurred and subsampled by 2 (``BlurPool2D``, reflected border; average pooling
    without ``blurpool``) and the first BlurMaxPool is dropped, so the blocks see
    12, 10, 8, 6, then 3 pixels: the same parameters, ~1/4 of the MACs and ~1.8x the
    training images per second on CPU, but 98.68 % instead of 99.10 % validation
    accuracy with mnist_1500_fast (``benchmarks/results/levers.md``), so no recipe
    uses it.

    ``bn_scale=False`` drops every BatchNorm's gamma (``widths`` ``(8, 12, 12, 14,
    16)``: 108 of the 1,494 parameters). Every BatchNorm here is followed by a ReLU
    and then a linear layer (convolution, SE's pooling or the GAP + dense head),
    which absorbs a positive scale, so the net loses no function and the budget
    buys width instead. It trains worse here, though: with ``widths=(8, 12, 13, 15,
    17)`` (1,489 parameters) mnist_1500_fast reaches 98.79 / 98.59 % validation
    accuracy (seeds 0 / 1, 10,000 held-out images) against 99.09 / 98.84 % for the
    default net (``recipes/results/development/mnist_fast_*v10k*``), so no recipe
    uses it.

    ``activation`` is the nonlinearity after every BatchNorm (a Keras activation
    name; ``"relu"`` by default). Parameter-free alternatives such as
    ``"leaky_relu"`` or ``"hard_swish"`` keep the budget and export to builtin
    int8 ops that TFLite Micro runs (the export's TFLM check verifies the file).
    Screened with mnist_1500_fast on 10,000 held-out images (seeds 0-2,
    ``recipes/results/development/mnist_fast_*_v10k_seed*.json``): final validation
    accuracy 99.04 / 98.85 / 99.17 % with hard_swish and 99.01 / 99.00 / 99.09 % with
    leaky_relu against 99.09 / 98.84 / 99.19 % with ReLU, so no recipe uses them.

    ``head="conv"`` ends in a classifier without the 16-channel pointwise layer and the
    dense layer: the last block's depthwise 3x3 (same padding), BN/act, then a 1x1
    convolution with biases straight to the classes and GAP (logits: the average of
    the per-position class scores, as in all-convolutional nets). ``widths`` then lists 4
    channel counts ``(a, b, c, d)``: the head costs ``21 * d + classes`` parameters
    instead of the dense head's ``11 * d + d * e + 2 * e + e * classes`` (266 fewer at
    d = 14, e = 16), for width elsewhere: ``widths=(8, 12, 16, 16)`` has 1,462.
    Screened with mnist_1500_fast on 10,000 held-out images (seeds 0-1,
    ``recipes/results/development/mnist_fast_convhead_*``): 98.81 / 98.80 % with
    ``(8, 12, 16, 16)`` and 98.96 / 98.74 % with ``(8, 14, 14, 16)`` (1,450 params)
    against 99.09 / 98.84 % for the default net: the last nonlinear 16-channel layer
    is worth more than the width it pays for, so no recipe uses it.
    """
    check_choice("head", head, ("dense", "conv"))
    n_widths = 4 if head == "conv" else 5
    if len(widths) != n_widths:
        raise ValueError(f"widths must list {n_widths} channel counts with head={head!r}; got {widths!r}")
    inputs, x = _input("mnist", input_shape, num_classes)
    block = dict(bn_momentum=bn_momentum, dropout=dropout, se_ratio=se_ratio, bn_scale=bn_scale,
                 activation=activation)
    a, b, c, d = widths[:4]
    if half_resolution:
        # The input has one channel and nothing trainable before it, so its blur is cheap
        # and Zhang's reflected border costs no MirrorPad gradient.
        x = (BlurPool2D(filter_size=blur_filter_size, strides=2, padding="reflect", name="input_blurpool")(x)
             if blurpool else layers.AveragePooling2D(2, name="input_avgpool")(x))
    x = ConvBNAct(a, 3, padding="valid", bn_momentum=bn_momentum, dropout=dropout, bn_scale=bn_scale,
                  activation=activation, name="stem")(x)
    x = DepthwiseSeparableBlock(b, 3, padding="valid", name="b1", **block)(x)
    if not half_resolution:
        x = _blur_downsample(x, "down1", blurpool, blur_filter_size, blur_padding)
    x = DepthwiseSeparableBlock(c, 3, padding="valid", name="b2", **block)(x)
    x = DepthwiseSeparableBlock(d, 3, padding="valid", name="b3", **block)(x)
    x = _blur_downsample(x, "down2", blurpool, blur_filter_size, blur_padding)
    if head == "dense":
        x = DepthwiseSeparableBlock(widths[4], 3, padding="same", name="b4", **block)(x)

    def top(x):
        if head == "conv":
            # The last block without its pointwise BN/act: a linear 1x1 convolution to the classes.
            x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="b4_depthwise")(x)
            norm, act = make_norm_act(resolve_activation("activation", activation)[0], bn_momentum, 1e-5, None,
                                      "b4_depthwise_", scale=bn_scale)
            x = apply_norm_act(x, norm, act, "bn_act")
            x = layers.Conv2D(num_classes, 1, name="class_scores")(x)
            return layers.GlobalAveragePooling2D(name="logits")(x)
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        return layers.Dense(num_classes, use_bias=False, name="logits")(x)

    return _finish(inputs, x, "effcnn_mnist", top, include_top=include_top, pooling=pooling,
                   classifier_activation=classifier_activation)


@register_model(
    "effcnn_cifar10",
    dataset="cifar10",
    description="Our <=140K-parameter CIFAR-10 net: 3x3 convs, residual DW-separable blocks, SE, BlurMaxPool, GAP head.",
)
def effcnn_cifar10(input_shape=None, num_classes: int = 10, *, include_top: bool = True, pooling: str | None = None,
                   classifier_activation: str | None = None, blurpool: bool = True, blur_filter_size: int = 3,
                   blur_padding: str = "reflect", se_ratio: float | None = 0.0625,
                   se_gate: str = "sigmoid", widths: Sequence[int] = (32, 64, 128, 192),
                   blocks: Sequence[int] = (2, 1, 1), dropout: float = 0.0,
                   head_dropout: float = 0.1, bn_momentum: float = 0.9) -> keras.Model:
    """A CIFAR-10 network under 140,000 parameters.

    One 3x3 convolution at full resolution, then three stages at 16, 8 and 4 pixels
    separated by BlurMaxPool. A full 3x3 convolution opens stage 2 (cheap in
    parameters where channels are few, and the best feature extractor there);
    everything after it is depthwise-separable, with residual blocks, a dilated
    block at 8x8 for receptive field, and squeeze-and-excitation in the two deepest
    stages. Doing the 32x32 work with one layer instead of two halves the
    multiply-accumulates (and the CPU time per epoch) for a small cost in accuracy.

    Args:
        input_shape: ``(height, width, channels)``, default ``(32, 32, 3)``; height
            and width may be ``None`` (the head pools globally).
        num_classes: classes of the classifier.
        include_top: with the classifier (GAP, dropout, dense logits); False
            returns the trunk's last feature map (see ``pooling``).
        pooling: with ``include_top=False``: None (the 4D feature map), ``"avg"``
            or ``"max"`` (global pooling to a vector).
        classifier_activation: None (logits, the default) or an activation such
            as ``"softmax"``, added as a weightless ``predictions`` layer.
        **architecture: ``blurpool``, ``blur_filter_size``, ``blur_padding``
            (``BlurPool2D``'s border: ``"reflect"`` as Zhang, or ``"zero"``, ~10 % faster
            training steps on CPU where MirrorPad's gradient is slow), ``se_ratio``,
            ``se_gate``, ``widths`` (stem and the three stages), ``blocks`` (residual
            blocks per stage: 16x16, 8x8 - the first one dilated -, 4x4; each stage
            after the first opens with a widening block), ``dropout``,
            ``head_dropout``, ``bn_momentum``.

    Example:

    ```python
    features = effcnn_cifar10(input_shape=(None, None, 3), include_top=False, pooling="avg")
    ```
    """
    if len(widths) != 4:
        raise ValueError(f"widths must list 4 channel counts; got {widths!r}")
    if len(blocks) != 3 or not all(isinstance(n, int) and n >= 0 for n in blocks) or blocks[1] < 1:
        raise ValueError(f"blocks must list 3 residual-block counts >= 0 (16x16, 8x8, 4x4 stages), the 8x8 one "
                         f">= 1 for its dilated block; got {blocks!r}")
    w1, w2, w3, w4 = widths
    inputs, x = _input("cifar10", input_shape, num_classes)
    block = dict(bn_momentum=bn_momentum, dropout=dropout)
    se = dict(se_ratio=se_ratio, se_gate=se_gate)
    x = ConvBNAct(w1, 3, name="stem", **block)(x)
    x = _blur_downsample(x, "down1", blurpool, blur_filter_size, blur_padding)
    x = ConvBNAct(w2, 3, name="s2_conv", **block)(x)
    for i in range(blocks[0]):
        x = DepthwiseSeparableBlock(w2, 3, residual=True, name=f"s2_block{i + 1}", **block)(x)
    x = _blur_downsample(x, "down2", blurpool, blur_filter_size, blur_padding)
    x = DepthwiseSeparableBlock(w3, 3, name="s3_expand", **block)(x)
    # Layer names of the default layout are those of the shipped weights.
    for i in range(blocks[1]):
        x = DepthwiseSeparableBlock(w3, 3, dilation_rate=2 if i == 0 else 1, residual=True,
                                    name="s3_dilated" if i == 0 else f"s3_block{i + 1}", **block, **se)(x)
    x = _blur_downsample(x, "down3", blurpool, blur_filter_size, blur_padding)
    x = DepthwiseSeparableBlock(w4, 3, name="s4_expand", **block)(x)
    for i in range(blocks[2]):
        x = DepthwiseSeparableBlock(w4, 3, residual=True, name="s4_block" if i == 0 else f"s4_block{i + 1}",
                                    **block, **se)(x)

    def top(x):
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        if head_dropout:
            x = layers.Dropout(head_dropout, name="head_drop")(x)
        return layers.Dense(num_classes, name="logits")(x)

    return _finish(inputs, x, "effcnn_cifar10", top, include_top=include_top, pooling=pooling,
                   classifier_activation=classifier_activation)


# ----------------------------------------------------------------------------- weights and files

# Layers of the classifier, which a transfer to another head leaves fresh; every other layer is trunk.
HEAD_LAYERS = ("logits", "classifier")
_HEAD_OPTIONS = ("include_top", "pooling", "classifier_activation", "input_shape", "num_classes", "classes")


def load_model(path: str | os.PathLike, *, compile: bool = True) -> keras.Model:
    """``keras.saving.load_model`` in safe mode, with one-line errors for files that are not models.

    Args:
        path: a ``.keras`` file saved by ``model.save``.
        compile: restore the optimizer, loss and metrics too.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is damaged, or a zip that is not a Keras model archive.

    Example:

    ```python
    model = load_model("runs/mnist_1500/model.keras")
    ```
    """
    import zipfile

    # Every custom object is registered already: importing this module ran keras_effcnn/__init__.py.
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist; pass the path of a .keras file saved by "
                                "model.save")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras model archive (no zip directory: truncated or another "
                         "format); save the model again with model.save(path)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if "config.json" not in names:
        raise ValueError(f"{path} is a zip file without config.json (it holds {sorted(names)[:5]}), so not a "
                         "Keras model archive; save the model with model.save(path)")
    return keras.saving.load_model(path, safe_mode=True, compile=compile)


def load_weights(model: keras.Model, weights: str | os.PathLike, *, builder: str | None = None,
                 options: dict | None = None) -> None:
    """Loads a preset's or a file's weights into ``model``; the trunk must match, the head may differ.

    Layers are matched by name. When ``model`` has another head than the weights
    (another ``num_classes``, ``include_top=False``), the trunk loads and the
    head layers stay freshly initialised, which is logged in one line; any other
    layer that does not fit is an error (the weights belong to another model).

    Args:
        model: a zoo model.
        weights: a preset name or alias (``keras_effcnn.presets``), a
            ``.weights.h5`` file of the same architecture, a ``.keras`` file, or a
            training run's checkpoint (a ``ckpt-*.npz`` file, or its ``checkpoints``
            folder for the newest one; the model must match it exactly).
        builder: the zoo builder ``model`` was made by (default: its name, when
            that is a builder's), to name a preset of another model clearly.
        options: the builder options ``model`` was made with.

    Raises:
        FileNotFoundError: a weights file or a preset's shipped file is missing.
        ValueError: the weights belong to another model.
    """
    builder = builder or (model.name if model.name in _REGISTRY else None)
    if presets.is_preset(weights):
        preset = presets.get_preset(str(weights))
        recipe = preset.recipe_record()
        label = f"weights={str(weights)!r} (preset {preset.name})"
        if builder is not None:
            ours = {k: v for k, v in (options or {}).items() if k not in _HEAD_OPTIONS}
            theirs = {k: v for k, v in recipe.model_options.items() if k not in _HEAD_OPTIONS}
            if builder != recipe.model or _normalised(ours) != _normalised(theirs):
                mine = [p for p in presets.list_presets() if presets.PRESETS[p].builder == builder]
                fix = f"use weights={mine[0]!r} or None" if mine else "no preset fits this model: pass weights=None"
                raise ValueError(f"{label} belong to another model, {_describe(recipe.model, theirs)}, not to this "
                                 f"{_describe(builder, ours)}; {fix}")
        path = preset.weights_path
        if not path.exists():
            raise FileNotFoundError(f"shipped weights {path.name} are missing from this installation ({path}); "
                                    "reinstall keras-effcnn with its weights")
        source = build(recipe.model, num_classes=preset.num_classes, **recipe.model_options)
        _load_exact(source, path, label)
    else:
        path = Path(weights)
        label = f"weights file {path}"
        if path.is_dir() or (path.suffix == ".npz" and path.is_file()):
            from keras_effcnn.callbacks.checkpoint import load_weights as load_checkpoint

            load_checkpoint(model, path)
            return
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist; pass a preset "
                                    f"({presets.list_presets()}), a .weights.h5 / .keras file or a run's "
                                    "checkpoint (.npz, or its checkpoints folder)")
        if path.suffix == ".keras":
            source = load_model(path, compile=False)
        else:
            _load_exact(model, path, label)
            return
    _transfer(source, model, label)


def _describe(builder: str, options: dict) -> str:
    return builder + (f" with {options}" if options else "")


def _normalised(options: dict) -> dict:
    # Tuples and lists compare equal (a recipe read from JSON holds lists).
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _load_exact(model: keras.Model, path: Path, label: str) -> None:
    """``model.load_weights(path)``, turning Keras' partial-load warnings into one error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except (ValueError, KeyError, OSError) as error:
            first = (str(error).strip() or type(error).__name__).splitlines()[0]
            raise ValueError(f"{label} do not fit the {model.name} model ({first[:200]}); they belong to "
                             "another model: build the model they were saved from") from None
    # A file saved after training also holds the optimizer's state, which inference does not need;
    # every other warning of a weights load means that some weights did not load.
    problems = [str(w.message) for w in caught if "optimizer" not in str(w.message)]
    if problems:
        raise ValueError(f"{label} do not fit the {model.name} model ({problems[0].splitlines()[0][:200]}); "
                         "they belong to another model: build the model they were saved from")


def _transfer(source: keras.Model, model: keras.Model, label: str) -> None:
    """Copies the weights of same-named, same-shaped layers from ``source`` to ``model``."""
    theirs = {layer.name: layer for layer in source.layers}
    loaded, fresh = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        other = theirs.get(layer.name)
        if other is not None and [tuple(w.shape) for w in other.weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(other.get_weights())
            loaded.append(layer.name)
        else:
            fresh.append(layer.name)
    trunk_misfits = [name for name in fresh if name not in HEAD_LAYERS]
    if trunk_misfits or not loaded:
        raise ValueError(f"{label} do not fit the {model.name} model: layer(s) {trunk_misfits or fresh} "
                         f"are missing from them or have other shapes; they belong to another model "
                         "(build the model they were saved from, or pass weights=None)")
    if fresh:
        logger.warning("keras_effcnn: loaded %s into %d layers of %s; new, untrained head: %s",
                       label, len(loaded), model.name, ", ".join(fresh))


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
    (e.g. BlurPool's fixed depthwise blur). On the JAX backend the same count is
    read from the ``jaxpr`` of the model (TensorFlow cannot trace JAX layers).
    """
    if keras.backend.backend() == "jax":
        return _count_macs_jax(model)
    import tensorflow as tf

    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    macs = 0
    for op in _graph_operations(graph):
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


def _graph_operations(graph):
    """The graph's operations, also those inside called functions.

    Keras runs grouped convolutions on CPU as an inner XLA-compiled ``tf.function``,
    which shows up as one ``StatefulPartitionedCall`` op; TensorFlow has no public
    API to reach a called function's graph, hence ``_get_function``.
    """
    for op in graph.get_operations():
        yield op
        if op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            yield from _graph_operations(graph._get_function(op.get_attr("f").name).graph)


def _count_macs_jax(model: keras.Model) -> int:
    """:func:`count_macs` from the model's ``jaxpr``: convolutions and ``dot_general``."""
    import jax
    import jax.extend.core
    import jax.numpy as jnp

    def walk(jaxpr) -> int:
        macs = 0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "conv_general_dilated":
                rhs = eqn.invars[1].aval.shape
                rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
                macs += _prod(eqn.outvars[0].aval.shape) * rhs[rhs_spec[1]] * _prod([rhs[d] for d in rhs_spec[2:]])
            elif name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                macs += _prod(eqn.outvars[0].aval.shape) * _prod([lhs[d] for d in contract])
            for param in eqn.params.values():  # nested calls: jit, custom_jvp, ...
                for sub in param if isinstance(param, (list, tuple)) else (param,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        macs += walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        macs += walk(sub)
        return macs

    x = jnp.zeros((1, *model.input_shape[1:]), "float32")
    return int(walk(jax.make_jaxpr(lambda t: model(t, training=False))(x).jaxpr))


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

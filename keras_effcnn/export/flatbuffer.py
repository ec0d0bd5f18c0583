"""Edit a converted ``.tflite`` flatbuffer: widen degenerate int8 scales, drop tensor names, embed labels.

Also reads what a file carries: its op list, its metadata entries and its labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_effcnn.export.litert import _io_details

LABELS_METADATA_NAME = "keras_effcnn.labels"


def labels_file(path: str | Path) -> Path:
    """The labels file that travels with ``path``: ``<stem>.labels.txt`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".labels.txt")


def read_labels(path: str | Path) -> list[str] | None:
    """Class names of a ``.tflite`` file written by :func:`to_tflite`.

    The labels embedded in the flatbuffer metadata travel inside the file and
    win; ``<stem>.labels.txt`` beside it is read when none are embedded. A labels
    file must have one line per output class and agree with the embedded labels.

    Args:
        path: the ``.tflite`` file.

    Returns:
        The list of class names, or ``None``.

    Raises:
        ValueError: the labels file has another number of lines than the model
            has classes, or differs from the embedded labels.

    Example:
        >>> read_labels("mnist_int8.tflite")[:3]  # doctest: +SKIP
        ['0', '1', '2']
    """
    path = Path(path)
    side = labels_file(path)
    text = embedded_metadata(path).get(LABELS_METADATA_NAME)
    labels = None if text is None else [line for line in text.decode("utf-8").splitlines() if line]
    if side.exists():
        side_labels = [line for line in side.read_text().splitlines() if line]
        classes = _io_details(path)[1][0].shape[-1]
        if len(side_labels) != classes:
            raise ValueError(f"{side} has {len(side_labels)} labels but {path.name} outputs {classes} classes; "
                             f"write one class name per line, in output order, or delete {side.name}")
        if labels is not None and side_labels != labels:
            raise ValueError(f"{side} differs from the labels embedded in {path.name}; delete {side.name} or "
                             "export the model again with the labels you want")
        labels = side_labels if labels is None else labels
    return labels


def embedded_metadata(path: str | Path) -> dict[str, bytes]:
    """All ``Model.metadata`` entries of a ``.tflite`` file, by name."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    out = {}
    for entry in model.metadata or []:
        name = entry.name.decode("utf-8") if isinstance(entry.name, bytes) else entry.name
        data = model.buffers[entry.buffer].data
        out[name] = b"" if data is None else bytes(bytearray(data))
    return out


def _finish_flatbuffer(
    flatbuffer: bytes, labels: Sequence[str] | None, repair: bool, strip_names: bool
) -> tuple[bytes, list[str]]:
    """Widen degenerate int8 scales, drop inner tensor names, embed the labels."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    widened = _widen_degenerate_scales(model) if repair else []
    if strip_names:
        for subgraph in model.subgraphs:
            boundary = set(subgraph.inputs) | set(subgraph.outputs)
            for index, tensor in enumerate(subgraph.tensors):
                if index not in boundary:
                    tensor.name = None
    if labels is not None:
        _set_metadata(model, LABELS_METADATA_NAME, "\n".join(labels) + "\n")
    if not (widened or strip_names or labels is not None):
        return flatbuffer, []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), widened


def _set_metadata(model, name: str, text: str) -> None:
    """Add (or replace) a named ``Model.metadata`` buffer; runtimes ignore unknown names."""
    from ai_edge_litert import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != name] + [entry]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# Ops whose integer kernels derive their rescaling from the input scale at run time,
# so widening an input's scale needs no change to them (weighted ops get their
# int32 bias requantized). Ops that require equal input/output scales (pooling,
# padding, reshapes, concatenation) are not in the list.
_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")

_RESCALING_OPS = _WEIGHTED_OPS + (
    "ADD", "SUB", "MUL", "MEAN", "SUM", "LOGISTIC", "TANH", "SOFTMAX", "HARD_SWISH",
    "QUANTIZE", "DEQUANTIZE",
)

# XNNPACK (the default CPU delegate of LiteRT, Android included) refuses a quantized
# convolution whose requantization scale input*weight/output is >= 256; keep a 2x margin.
_MAX_REQUANTIZATION_SCALE = 128.0


def _widen_degenerate_scales(model) -> list[str]:
    """Give activations that calibration saw (nearly) constant a usable int8 scale.

    A ReLU that is dead on every calibration image (common in the 2-4 channel
    bottleneck of a small squeeze-and-excitation block) gets a range of ~0 and
    a scale of ~1e-8; XNNPACK then rejects the producing convolution and the
    whole file fails to load on the default CPU runtime. The scale of such an
    output is raised to ``input_scale * max(weight_scale) / 128``, the
    accumulator's own resolution, which keeps every calibrated value exact and
    widens the representable range; the biases of consuming convolutions are
    requantized to the new input scale.

    Returns:
        The names of the widened tensors.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    integer_types = (schema.TensorType.INT8, schema.TensorType.UINT8)
    widened = []
    buffer_users: dict[int, int] = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            buffer_users[tensor.buffer] = buffer_users.get(tensor.buffer, 0) + 1
    for subgraph in model.subgraphs:
        ops = subgraph.operators
        names = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in ops]
        consumers: dict[int, list[int]] = {}
        for index, op in enumerate(ops):
            for tensor_index in op.inputs:
                consumers.setdefault(tensor_index, []).append(index)
        for index, op in enumerate(ops):
            if names[index] not in _WEIGHTED_OPS:
                continue
            x, w, y = (subgraph.tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
            if y.type not in integer_types or not all(_scales(t) is not None for t in (x, w, y)):
                continue
            needed = float(_scales(x)[0] * np.max(_scales(w)) / _MAX_REQUANTIZATION_SCALE)
            old = float(_scales(y)[0])
            users = consumers.get(op.outputs[0], [])
            if old >= needed or any(names[i] not in _RESCALING_OPS for i in users):
                continue
            _set_scale(y, needed)
            widened.append(_text(y.name))
            for user in users:
                consumer = ops[user]
                if names[user] in _WEIGHTED_OPS and consumer.inputs[0] == op.outputs[0]:
                    _requantize_bias(model, subgraph, consumer, old / needed, needed, buffer_users)
    return widened


def _scales(tensor):
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    return np.asarray(q.scale, dtype=np.float64)


def _set_scale(tensor, scale: float) -> None:
    from ai_edge_litert import schema_py_generated as schema

    q = tensor.quantization
    q.scale = [scale]
    zero_point = int(np.asarray(q.zeroPoint).reshape(-1)[0]) if q.zeroPoint is not None else 0
    low, high = (-128, 127) if tensor.type == schema.TensorType.INT8 else (0, 255)
    if q.min is not None and q.max is not None:
        q.min, q.max = [scale * (low - zero_point)], [scale * (high - zero_point)]


def _requantize_bias(model, subgraph, op, factor: float, input_scale: float, buffer_users) -> None:
    """Bias scale is input_scale * weight_scale: rescale the int32 bias to the new input scale."""
    from ai_edge_litert import schema_py_generated as schema

    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return
    bias = subgraph.tensors[op.inputs[2]]
    weight_scales = _scales(subgraph.tensors[op.inputs[1]])
    if bias.type != schema.TensorType.INT32 or weight_scales is None:
        return
    data = model.buffers[bias.buffer].data
    values = np.frombuffer(bytes(bytearray(data)), dtype="<i4") if data is not None else None
    if values is not None and values.size:
        new = np.clip(np.round(values * factor), -(2**31), 2**31 - 1).astype("<i4")
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(new.tobytes(), dtype=np.uint8)
        if buffer_users.get(bias.buffer, 1) > 1:  # a shared constant: give this bias its own copy
            model.buffers.append(buffer)
            bias.buffer = len(model.buffers) - 1
        else:
            model.buffers[bias.buffer] = buffer
    bias.quantization.scale = list(input_scale * weight_scales)


def _flatbuffer_ops(flatbuffer: bytes) -> list[str]:
    """Sorted op names of every subgraph; custom ops appear as ``CUSTOM:<code>``."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    names = set()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if code.customCode:
                custom = code.customCode
                names.add("CUSTOM:" + (custom.decode() if isinstance(custom, bytes) else custom))
            else:
                names.add(flatbuffer_utils.opcode_to_name(model, op.opcodeIndex))
    return sorted(names)


def model_ops(path: str | Path) -> list[str]:
    """Sorted builtin op names of a ``.tflite`` file (``"DEPTHWISE_CONV_2D"``...)."""
    return _flatbuffer_ops(Path(path).read_bytes())

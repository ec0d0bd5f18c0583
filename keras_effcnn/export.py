"""TFLite / LiteRT export of Keras 3 models, with builtin ops only.

Keras 3 under TF >= 2.16 broke ``tf.lite.TFLiteConverter.from_keras_model``
for many models, ``from_concrete_functions`` can silently produce NaNs, and
TF-MOT does not accept Keras 3 models. The route that works is: export a
SavedModel with ``model.export(dir, format="tf_saved_model")`` and convert it
with ``tf.lite.TFLiteConverter.from_saved_model``. :func:`to_tflite` does
that, restricted to the TFLite builtin op set (no Select-TF "flex" ops, so the
file runs on the plain LiteRT runtime on Android and microcontrollers), and
maps conversion failures back to the offending Keras layers.

Quantization modes (``quantize=``):

* ``None``: float32 weights and activations.
* ``"float16"``: float16 weights, dequantized at load time; half the size.
* ``"dynamic"``: int8 weights of large tensors, float activations
  (dynamic-range quantization; tensors under 1024 elements stay float).
* ``"int8"``: full-integer quantization (weights and activations int8) with
  activation ranges calibrated on real images. Input and output stay float32
  by default (a ``QUANTIZE`` / ``DEQUANTIZE`` op at each end); ``int8_io`` makes
  them ``int8`` or ``uint8`` for integer-only accelerators.

Files are run with ``ai_edge_litert.interpreter.Interpreter`` (the
``tf.lite.Interpreter`` is deprecated): :func:`run_tflite`,
:func:`evaluate_tflite`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

QUANTIZE_MODES = (None, "float16", "dynamic", "int8")
INT8_IO_TYPES = (None, "int8", "uint8")
LABELS_METADATA_NAME = "keras_effcnn.labels"
DEFAULT_BATCH_SIZE = 256

# A layer-by-layer probe converts each layer alone; cap it so a failing export of a
# large model still ends in seconds.
_MAX_PROBED_LAYERS = 64


class ExportError(RuntimeError):
    """A model could not be converted to TFLite builtin ops.

    Attributes:
        layers: names of the Keras layers found responsible, outermost first
            (``"block3/se"`` for a sublayer), possibly empty.
        ops: names of the TensorFlow ops the converter rejected (``"FFT2D"``).
    """

    def __init__(self, message: str, layers: Sequence[str] = (), ops: Sequence[str] = ()):
        super().__init__(message)
        self.layers = list(layers)
        self.ops = list(ops)


@dataclasses.dataclass
class TensorInfo:
    """Name, shape, dtype and affine quantization of one model input or output.

    A quantized value ``q`` stands for ``scale * (q - zero_point)``; float
    tensors have ``scale == 0``.
    """

    name: str
    shape: list[int]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.dtype in ("int8", "uint8", "int16") and self.scale > 0


@dataclasses.dataclass
class ExportReport:
    """What :func:`to_tflite` wrote, and how well the file does once evaluated.

    Attributes:
        path: the ``.tflite`` file.
        quantize: the quantization mode (``None`` for float32).
        size_bytes: file size.
        ops: sorted builtin op names in the flatbuffer (``"CONV_2D"``...).
        input: the (first) input tensor.
        output: the (first) output tensor.
        int8_io: ``"int8"`` / ``"uint8"`` when integer I/O was requested.
        labels_path: the ``<stem>.labels.txt`` file, if labels were given.
        num_calibration: images used to calibrate ``"int8"`` ranges.
        widened_tensors: int8 activations whose degenerate calibrated scale
            was widened so that XNNPACK accepts the file (see
            :func:`_widen_degenerate_scales`); usually dead-ReLU SE bottlenecks.
        xnnpack: whether the file loads with LiteRT's default XNNPACK CPU
            delegate (as on Android); ``False`` means it only runs on the
            reference kernels.
        evaluation: the dict of :func:`evaluate_tflite` once run.
    """

    path: str
    quantize: str | None
    size_bytes: int
    ops: list[str]
    input: TensorInfo
    output: TensorInfo
    int8_io: str | None = None
    labels_path: str | None = None
    num_calibration: int | None = None
    widened_tensors: list[str] = dataclasses.field(default_factory=list)
    xnnpack: bool = True
    evaluation: dict[str, Any] | None = None

    @property
    def size_kb(self) -> float:
        """Size in kilobytes of 1000 bytes."""
        return self.size_bytes / 1000.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["quantize"] = self.quantize or "none"
        out["size_kb"] = round(self.size_kb, 3)
        out["size_kib"] = round(self.size_bytes / 1024.0, 3)
        return out

    def to_markdown(self) -> str:
        lines = [
            f"## TFLite export: `{Path(self.path).name}`",
            "",
            "| field | value |",
            "|---|---|",
            f"| quantization | {self.quantize or 'none (float32)'} |",
            f"| size | {self.size_bytes} bytes ({self.size_kb:.2f} KB, "
            f"{self.size_bytes / 1024:.2f} KiB) |",
            f"| input | {_tensor_markdown(self.input)} |",
            f"| output | {_tensor_markdown(self.output)} |",
            f"| ops | {', '.join(self.ops)} |",
        ]
        if self.num_calibration:
            lines.append(f"| calibration images | {self.num_calibration} |")
        if self.labels_path:
            lines.append(f"| labels | `{Path(self.labels_path).name}` |")
        if self.widened_tensors:
            lines.append(f"| widened int8 scales | {len(self.widened_tensors)} degenerate activation(s) |")
        lines.append(f"| loads with XNNPACK | {'yes' if self.xnnpack else 'NO (reference kernels only)'} |")
        for key, value in (self.evaluation or {}).items():
            lines.append(f"| {key} | {_format_value(value)} |")
        return "\n".join(lines) + "\n"

    def write(self) -> tuple[Path, Path]:
        """Write ``<stem>.report.json`` and ``<stem>.report.md`` beside the model.

        Returns:
            The JSON and Markdown paths.
        """
        path = Path(self.path)
        json_path = path.with_name(path.stem + ".report.json")
        md_path = path.with_name(path.stem + ".report.md")
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        md_path.write_text(self.to_markdown())
        return json_path, md_path


def _tensor_markdown(info: TensorInfo) -> str:
    text = f"`{info.dtype}` {info.shape}"
    if info.quantized:
        text += f", scale={info.scale:.6g}, zero_point={info.zero_point}"
    return text


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# --------------------------------------------------------------------------- export


def to_tflite(
    model: keras.Model,
    path: str | Path,
    quantize: str | None = None,
    representative_data: Any = None,
    num_calibration: int = 200,
    int8_io: str | None = None,
    labels: Sequence[str] | None = None,
    report: bool = True,
    saved_model_dir: str | Path | None = None,
    keep_tensor_names: bool = False,
) -> ExportReport:
    """Convert a Keras model to a ``.tflite`` file that uses builtin ops only.

    The model is exported as a SavedModel to a temporary directory and
    converted with ``tf.lite.TFLiteConverter.from_saved_model`` (the route that
    works for Keras 3; see the module docstring). With ``labels`` the class
    names are written one per line to ``<stem>.labels.txt`` beside the file
    (the TFLite Task Library convention) and embedded in the flatbuffer's
    metadata under ``"keras_effcnn.labels"`` (see :func:`read_labels`).

    Args:
        model: a built Keras model taking ``[0, 1]`` images.
        path: the ``.tflite`` file to write; parent directories are created.
        quantize: ``None`` (float32), ``"float16"``, ``"dynamic"`` (int8
            weights, float activations) or ``"int8"`` (full integer).
            ``"none"`` is accepted for ``None``.
        representative_data: real training images for ``"int8"`` calibration:
            a NumPy array ``(N, H, W, C)`` (``uint8`` 0..255 is divided by 255,
            float must already be in ``[0, 1]``), a ``tf.data.Dataset`` or any
            iterable of images, batches or ``(images, labels)`` pairs. From an
            array ``num_calibration`` images are drawn at random (seed 0); from
            an iterable the first ``num_calibration`` are used.
        num_calibration: number of calibration images, >= 1.
        int8_io: with ``"int8"`` only: ``None`` keeps float32 input/output,
            ``"int8"`` or ``"uint8"`` makes them integer tensors (inputs are
            quantized with the reported scale/zero-point, see :func:`run_tflite`).
        labels: class names, one per model output; their count must match
            the model's last output dimension.
        report: also write ``<stem>.report.json`` and ``<stem>.report.md``.
        saved_model_dir: reuse this SavedModel of ``model`` (written by an
            earlier call or by :func:`export_saved_model`) instead of exporting
            a fresh one, to convert one model several ways cheaply.
        keep_tensor_names: keep the names of intermediate tensors (useful to
            debug quantization layer by layer). By default only the input and
            output names and the signature survive: the names are ~20% of a
            small model's file and play no part in inference.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ValueError: bad arguments.
        ExportError: the model needs ops outside the TFLite builtin set; the
            message names the offending layers and ops.

    Example:
        >>> import keras
        >>> from keras_effcnn.export import to_tflite
        >>> model = keras.Sequential([keras.Input((28, 28, 1)),
        ...     keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
        ...     keras.layers.Dense(10, activation="softmax")])
        >>> rep = to_tflite(model, "/tmp/tiny.tflite", labels=[str(i) for i in range(10)])
        >>> rep.ops
        ['CONV_2D', 'FULLY_CONNECTED', 'MEAN', 'SOFTMAX']
    """
    import tensorflow as tf

    if quantize == "none":
        quantize = None
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"`quantize` must be one of {QUANTIZE_MODES} (or 'none'); got {quantize!r}"
        )
    if int8_io not in INT8_IO_TYPES:
        raise ValueError(f"`int8_io` must be one of {INT8_IO_TYPES}; got {int8_io!r}")
    if int8_io is not None and quantize != "int8":
        raise ValueError(
            f"`int8_io`={int8_io!r} needs quantize='int8'; got quantize={quantize!r}"
        )
    if isinstance(num_calibration, bool) or not isinstance(num_calibration, int) or num_calibration < 1:
        raise ValueError(f"`num_calibration` must be an integer >= 1; got {num_calibration!r}")
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            "`representative_data` is required for quantize='int8': pass real training "
            "images in [0, 1] (or uint8) to calibrate activation ranges"
        )
    if not getattr(model, "built", False) or not model.inputs:
        raise ValueError("`model` must be a built Keras model with defined inputs")
    input_shape = tuple(model.inputs[0].shape)
    if labels is not None:
        labels = [str(label) for label in labels]
        num_outputs = model.outputs[0].shape[-1]
        if len(labels) != num_outputs:
            raise ValueError(
                f"`labels` has {len(labels)} names but the model has {num_outputs} outputs"
            )
        bad = [label for label in labels if "\n" in label or not label.strip()]
        if bad:
            raise ValueError(f"`labels` must be non-empty single-line names; got {bad!r}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = float32_model(model)

    calibration = None
    if quantize == "int8":
        calibration = _calibration_images(representative_data, num_calibration, input_shape)

    def configure(converter):
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = lambda: ([image[None]] for image in calibration)
            if int8_io is not None:
                converter.inference_input_type = getattr(tf, int8_io)
                converter.inference_output_type = getattr(tf, int8_io)

    with tempfile.TemporaryDirectory(prefix="keras_effcnn_export_") as tmp:
        if saved_model_dir is None:
            saved_model_dir = export_saved_model(model, Path(tmp) / "saved_model")
        try:
            flatbuffer = _convert_saved_model(saved_model_dir, configure)
        except _ConversionFailed as failure:
            raise _explain_failure(model, failure.error, configure, quantize) from failure.error

    ops = _flatbuffer_ops(flatbuffer)
    non_builtin = [op for op in ops if op.startswith("CUSTOM:")]
    if non_builtin:
        raise ExportError(f"converted model contains non-builtin ops {non_builtin}", ops=non_builtin)
    flatbuffer, widened = _finish_flatbuffer(
        flatbuffer, labels, repair=quantize == "int8", strip_names=not keep_tensor_names
    )
    path.write_bytes(flatbuffer)

    labels_path = None
    if labels is not None:
        labels_path = labels_file(path)
        labels_path.write_text("\n".join(labels) + "\n")

    inputs, outputs = _io_details(path)
    result = ExportReport(
        path=str(path),
        quantize=quantize,
        size_bytes=path.stat().st_size,
        ops=ops,
        input=inputs[0],
        output=outputs[0],
        int8_io=int8_io,
        labels_path=None if labels_path is None else str(labels_path),
        num_calibration=None if calibration is None else len(calibration),
        widened_tensors=widened,
        xnnpack=_loads_with_xnnpack(path),
    )
    if not result.xnnpack:
        warnings.warn(
            f"{path} does not load with LiteRT's default XNNPACK CPU delegate (Android's default); "
            "it runs only on the reference kernels",
            stacklevel=2,
        )
    if report:
        result.write()
    return result


def labels_file(path: str | Path) -> Path:
    """The labels file that travels with ``path``: ``<stem>.labels.txt`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".labels.txt")


def read_labels(path: str | Path) -> list[str] | None:
    """Class names of a ``.tflite`` file written by :func:`to_tflite`.

    Reads ``<stem>.labels.txt`` if present, else the labels embedded in the
    flatbuffer metadata; ``None`` when neither exists.

    Args:
        path: the ``.tflite`` file.

    Returns:
        The list of class names, or ``None``.

    Example:
        >>> read_labels("mnist_int8.tflite")[:3]  # doctest: +SKIP
        ['0', '1', '2']
    """
    path = Path(path)
    side = labels_file(path)
    if side.exists():
        return [line for line in side.read_text().splitlines() if line]
    text = embedded_metadata(path).get(LABELS_METADATA_NAME)
    if text is None:
        return None
    return [line for line in text.decode("utf-8").splitlines() if line]


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


class _ConversionFailed(Exception):
    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


_MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


def _float32_config(value: Any) -> Any:
    """A layer config with every mixed-precision dtype policy replaced by float32."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "dtype" and _is_mixed_policy(item):
                out[key] = "float32"
            else:
                out[key] = _float32_config(item)
        return out
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    return value


def _is_mixed_policy(value: Any) -> bool:
    if isinstance(value, str):
        return value in _MIXED_POLICIES
    if isinstance(value, dict):
        return value.get("config", {}).get("name") in _MIXED_POLICIES
    return False


def float32_model(model: keras.Model) -> keras.Model:
    """``model`` itself if it computes in float32, else a float32 copy with the same weights.

    TFLite builtin kernels compute in float32 (or integers): a model built under
    ``mixed_float16`` traces float16 convolutions, which are no builtins. Its
    variables are float32 already, so a float32 clone computes the same function
    at full precision.

    Args:
        model: a functional or sequential Keras model.

    Returns:
        A model whose every layer computes in float32.

    Raises:
        ValueError: a mixed-precision subclassed model (it cannot be cloned).
    """
    if all(
        layer.dtype_policy.compute_dtype == "float32"
        for layer in model._flatten_layers(include_self=True, recursive=True)
    ):
        return model
    previous = keras.config.dtype_policy()
    # Sublayers created inside custom layers follow the global policy, not the config.
    keras.config.set_dtype_policy("float32")
    try:
        clone = keras.models.clone_model(
            model,
            clone_function=lambda layer: type(layer).from_config(_float32_config(layer.get_config())),
        )
    except ValueError as error:
        raise ValueError(
            f"`model` computes in {model.dtype_policy.name} and cannot be cloned to float32 for "
            f"export ({error}); rebuild it under the float32 policy and load its weights"
        ) from error
    finally:
        keras.config.set_dtype_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


def export_saved_model(model: keras.Model, directory: str | Path) -> Path:
    """Write ``model``'s inference function as a TF SavedModel (the converter's input).

    Args:
        model: a built Keras model.
        directory: where to write it.

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        ExportError: tracing the model failed.
    """
    try:
        float32_model(model).export(str(directory), format="tf_saved_model", verbose=False)
    except Exception as error:  # the tracing error names the layer itself
        raise ExportError(f"SavedModel export failed before TFLite conversion: {error}") from error
    return Path(directory)


def _convert_saved_model(saved_model_dir: str | Path, configure) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    configure(converter)
    try:
        return converter.convert()
    except Exception as error:
        raise _ConversionFailed(error) from error


def _calibration_images(data: Any, count: int, input_shape: tuple) -> np.ndarray:
    """Up to ``count`` float32 ``[0, 1]`` images shaped like the model input."""
    if isinstance(data, np.ndarray):
        images = _as_float_images(data, input_shape, "representative_data")
        if len(images) > count:
            index = np.random.default_rng(0).choice(len(images), count, replace=False)
            images = images[np.sort(index)]
    else:
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            data = data.as_numpy_iterator()
        elif not isinstance(data, Iterable):
            raise ValueError(
                "`representative_data` must be a NumPy array, a tf.data.Dataset or an "
                f"iterable of images; got {type(data).__name__}"
            )
        chunks, total = [], 0
        for element in data:
            if isinstance(element, (tuple, list)):
                element = element[0]
            element = np.asarray(element)
            if _is_single_image(element.shape, input_shape):
                element = element[None]
            chunk = _as_float_images(element, input_shape, "representative_data")
            chunks.append(chunk[: count - total])
            total += len(chunks[-1])
            if total >= count:
                break
        images = np.concatenate(chunks) if chunks else np.zeros((0,) + input_shape[1:], "float32")
    if len(images) == 0:
        raise ValueError("`representative_data` yielded no images")
    return images


def _is_single_image(shape: tuple, input_shape: Sequence) -> bool:
    """Whether ``shape`` is one ``(H, W, C)`` image (or ``(H, W)`` for one channel)."""
    expected = tuple(input_shape[1:])

    def same(got, want):
        return len(got) == len(want) and all(w is None or w < 0 or g == w for g, w in zip(got, want))

    return same(shape, expected) or (expected[-1] == 1 and same(shape, expected[:-1]))


def _as_float_images(images: Any, input_shape: Sequence, argument: str = "images") -> np.ndarray:
    """``uint8`` 0..255 or float ``[0, 1]`` images -> float32 ``(N,) + input_shape[1:]``."""
    images = np.asarray(images)
    expected = tuple(input_shape[1:])
    if images.ndim == len(expected) and expected[-1] == 1:
        images = images[..., None]  # (N, H, W) grayscale
    if images.ndim != len(expected) + 1 or any(
        want is not None and want > 0 and got != want
        for got, want in zip(images.shape[1:], expected)
    ):
        raise ValueError(
            f"`{argument}` must have shape (N,) + {expected}; got {images.shape}"
        )
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    images = images.astype(np.float32)
    if images.size and (images.max() > 1.5 or images.min() < -0.5):
        raise ValueError(
            f"`{argument}` must be uint8 pixels or floats in [0, 1]; got float values in "
            f"[{images.min():.3g}, {images.max():.3g}] (raw 0..255 pixels stored as float?)"
        )
    return images


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


def input_shape(path: str | Path) -> tuple[int | None, ...]:
    """Input shape of a ``.tflite`` file, ``None`` for a dynamic (batch) dimension."""
    shape = _io_details(path)[0][0].shape
    return tuple(None if d < 0 else d for d in shape)


def model_ops(path: str | Path) -> list[str]:
    """Sorted builtin op names of a ``.tflite`` file (``"DEPTHWISE_CONV_2D"``...)."""
    return _flatbuffer_ops(Path(path).read_bytes())


# ------------------------------------------------------------------ failure → layers


_REJECTED_OP = re.compile(r"'tf\.(\w+)' op is (?:neither a custom op nor a flex op|not supported)")
_SELECT_OPS = re.compile(r"TF Select ops: ([\w, ]+)")
_LOCATION = re.compile(r'fused\["(\w+):", "([^"]+)"\]')


def _rejected_ops(message: str) -> list[str]:
    ops = set(_REJECTED_OP.findall(message))
    for group in _SELECT_OPS.findall(message):
        ops.update(op.strip() for op in group.split(",") if op.strip())
    return sorted(ops)


def _children(layer) -> list:
    if isinstance(layer, keras.Model) and hasattr(layer, "layers"):
        return list(layer.layers)
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _match(segment: str, candidates: list) -> Any:
    # Keras/TF name scopes uniquify with "_<n>" suffixes ("se" -> "se_1"); strip them
    # one at a time until a layer name matches, exact names first.
    name = segment
    while True:
        for layer in candidates:
            if layer.name == name:
                return layer
        stripped = re.sub(r"_\d+$", "", name)
        if stripped == name:
            return None
        name = stripped


def _layers_from_scope(model: keras.Model, scope: str) -> list:
    """The chain of nested layers named by a TF scope path like ``model_1/block/se/FFT2D``."""
    chain, current = [], model
    for segment in scope.split("@")[0].split("/")[:-1]:
        layer = _match(segment, _children(current))
        if layer is not None:
            chain.append(layer)
            current = layer
    return chain


def _describe(chain: list) -> str:
    return "/".join(layer.name for layer in chain) + f" ({type(chain[-1]).__name__})"


def _explain_failure(model, error: Exception, configure, quantize) -> ExportError:
    message = str(error)
    ops = _rejected_ops(message)
    found: dict[str, str] = {}
    for op_type, scope in _LOCATION.findall(message):
        if ops and op_type not in ops:
            continue
        chain = _layers_from_scope(model, scope)
        if chain:
            found.setdefault("/".join(layer.name for layer in chain), _describe(chain))
    how = "location in the converter error"
    if not found:
        how = "converting each layer alone"
        for chain in _probe_layers(model, configure, quantize):
            found.setdefault("/".join(layer.name for layer in chain), _describe(chain))
    said = re.search(r"'tf\.\w+' op [^\n]*", message)
    first_line = said.group(0) if said else next(
        (line for line in message.splitlines() if "error" in line), message[:300]
    )
    if found:
        text = (
            f"TFLite conversion with builtin ops only failed in layer(s) "
            f"{', '.join(found.values())} (found by {how})"
        )
    else:
        text = "TFLite conversion with builtin ops only failed; no single layer could be blamed"
    if ops:
        text += f"; TensorFlow ops without a TFLite builtin: {', '.join(ops)}"
    text += (
        ". Replace them with layers built from keras.ops that map to TFLite builtins "
        f"(Select-TF ops are not allowed). Converter said: {first_line[:500]}"
    )
    return ExportError(text, layers=list(found), ops=ops)


def _probe_layers(model, configure, quantize) -> list[list]:
    """Layers of a functional model that fail to convert on their own."""
    layers = [layer for layer in getattr(model, "layers", []) if not isinstance(layer, keras.layers.InputLayer)]
    # Custom layers are the usual suspects: probe them first, Keras' own only if none fails.
    custom = [layer for layer in layers if not type(layer).__module__.startswith("keras.")]
    failing = _probe(custom[:_MAX_PROBED_LAYERS], configure, quantize)
    if not failing:
        keras_own = [layer for layer in layers if layer not in custom]
        failing = _probe(keras_own[: max(0, _MAX_PROBED_LAYERS - len(custom))], configure, quantize)
    return failing


def _probe(layers: list, configure, quantize) -> list[list]:
    import tensorflow as tf

    failing = []
    for layer in layers:
        try:
            inbound = layer.input
            shapes = [t.shape for t in (inbound if isinstance(inbound, (list, tuple)) else [inbound])]
            inputs = [keras.Input(shape=s[1:]) for s in shapes]
            # A fresh copy keeps the user's layer free of extra call nodes; op
            # support does not depend on the weight values.
            clone = type(layer).from_config(layer.get_config())
            probe = keras.Model(inputs, clone(inputs if len(inputs) > 1 else inputs[0]))
        except Exception:  # shared, non-functional or unclonable layers cannot be isolated
            continue

        def probe_config(converter, shapes=shapes):
            configure(converter)
            if quantize == "int8":
                # Op support does not depend on the values, only on the graph.
                rng = np.random.default_rng(0)
                converter.representative_dataset = lambda: (
                    [rng.random((1,) + tuple(s[1:]), dtype=np.float32) for s in shapes]
                    for _ in range(4)
                )
                converter.inference_input_type = tf.float32
                converter.inference_output_type = tf.float32

        with tempfile.TemporaryDirectory(prefix="keras_effcnn_probe_") as tmp:
            try:
                _convert_saved_model(export_saved_model(probe, Path(tmp) / "saved_model"), probe_config)
            except _ConversionFailed:
                failing.append([layer])
            except ExportError:
                continue
    return failing


# ------------------------------------------------------------------------ running


def _tensor_info(detail: dict) -> TensorInfo:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        name=str(detail["name"]),
        shape=[int(d) for d in detail.get("shape_signature", detail["shape"])],
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero_point),
    )


def _interpreter(path: str | Path, num_threads: int = 1, reference: bool = False):
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "running .tflite files needs the LiteRT runtime: pip install 'keras-effcnn[litert]'"
        ) from error
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"`num_threads` must be an integer >= 1; got {num_threads!r}")
    if reference:
        return Interpreter(
            model_path=str(path), num_threads=num_threads,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    return Interpreter(model_path=str(path), num_threads=num_threads)


def _loads_with_xnnpack(path: str | Path) -> bool:
    try:
        _interpreter(path).allocate_tensors()
    except RuntimeError:
        return False
    return True


def _batched_interpreter(path: str | Path, num_threads: int, batch: int):
    """An interpreter with its first input resized to ``batch`` and tensors allocated.

    Uses the default XNNPACK delegate and falls back, with a warning, to the
    reference kernels when XNNPACK rejects the model.
    """
    for reference in (False, True):
        interpreter = _interpreter(path, num_threads, reference=reference)
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], [batch] + list(detail["shape"][1:]))
        try:
            interpreter.allocate_tensors()
            return interpreter
        except RuntimeError as error:
            if reference:
                raise
            warnings.warn(f"XNNPACK rejected {path} ({error}); using the reference kernels", stacklevel=3)


def _io_details(path: str | Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    interpreter = _interpreter(path)
    return (
        [_tensor_info(d) for d in interpreter.get_input_details()],
        [_tensor_info(d) for d in interpreter.get_output_details()],
    )


def quantize_input(images: np.ndarray, info: dict | TensorInfo) -> np.ndarray:
    """Map float ``[0, 1]`` images to the input tensor's dtype (identity for float).

    ``q = clip(round(x / scale) + zero_point)`` in the integer type's range.

    Args:
        images: float32 images in ``[0, 1]``.
        info: an interpreter input detail dict or a :class:`TensorInfo`.

    Returns:
        The array to hand to ``interpreter.set_tensor``.
    """
    dtype, scale, zero_point = _dtype_scale_zero_point(info)
    if not np.issubdtype(dtype, np.integer):
        return images.astype(dtype)
    if scale <= 0:
        raise ValueError(f"integer input tensor without quantization parameters: {info}")
    limits = np.iinfo(dtype)
    q = np.round(images / scale) + zero_point
    return np.clip(q, limits.min, limits.max).astype(dtype)


def dequantize_output(values: np.ndarray, info: dict | TensorInfo) -> np.ndarray:
    """Map an output tensor to float32: ``scale * (q - zero_point)`` for integers."""
    dtype, scale, zero_point = _dtype_scale_zero_point(info)
    if not np.issubdtype(dtype, np.integer):
        return values.astype(np.float32)
    return (scale * (values.astype(np.float32) - zero_point)).astype(np.float32)


def _dtype_scale_zero_point(info: dict | TensorInfo) -> tuple[np.dtype, float, int]:
    if isinstance(info, TensorInfo):
        return np.dtype(info.dtype), info.scale, info.zero_point
    scale, zero_point = info.get("quantization", (0.0, 0))
    return np.dtype(info["dtype"]), float(scale), int(zero_point)


def run_tflite(
    path: str | Path,
    images: np.ndarray,
    num_threads: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Run a single-input ``.tflite`` classifier over images; returns float32 outputs.

    Integer (``int8``/``uint8``) inputs are quantized with the file's input
    scale and zero-point and integer outputs dequantized, so the result is on
    the same scale as the Keras model's output (probabilities or logits). The
    input tensor is resized to ``batch_size``; the last batch is zero-padded.

    Args:
        path: the ``.tflite`` file.
        images: ``(N, H, W, C)`` ``uint8`` 0..255 or float ``[0, 1]`` images
            (``(N, H, W)`` for one channel).
        num_threads: interpreter CPU threads, >= 1.
        batch_size: images per invoke, >= 1.

    Returns:
        ``(N, num_outputs)`` float32 array.

    Example:
        >>> probs = run_tflite("mnist_int8.tflite", x_test[:100])  # doctest: +SKIP
        >>> probs.shape  # doctest: +SKIP
        (100, 10)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1; got {batch_size!r}")
    detail = _interpreter(path).get_input_details()[0]
    images = _as_float_images(images, [None] + list(detail["shape"][1:]))
    n = len(images)
    batch = max(1, min(batch_size, n))
    interpreter = _batched_interpreter(path, num_threads, batch)
    detail = interpreter.get_input_details()[0]
    out_detail = interpreter.get_output_details()[0]
    outputs = []
    for start in range(0, n, batch):
        chunk = images[start : start + batch]
        if len(chunk) < batch:
            pad = np.zeros((batch - len(chunk),) + chunk.shape[1:], chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        interpreter.set_tensor(detail["index"], quantize_input(chunk, detail))
        interpreter.invoke()
        result = dequantize_output(interpreter.get_tensor(out_detail["index"]), out_detail)
        outputs.append(result[: min(batch, n - start)])
    if not outputs:
        return np.zeros((0,) + tuple(out_detail["shape"][1:]), np.float32)
    return np.concatenate(outputs)


def latency_ms(path: str | Path, images: np.ndarray, runs: int = 100, num_threads: int = 1) -> float:
    """Median wall time of ``runs`` single-image invokes, in milliseconds.

    Three warm-up invokes are not timed; the images are cycled through.

    Args:
        path: the ``.tflite`` file.
        images: at least one image (``uint8`` or float ``[0, 1]``).
        runs: timed invokes, >= 1.
        num_threads: interpreter CPU threads (1 for the per-core figure).

    Returns:
        The median latency in ms.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"`runs` must be an integer >= 1; got {runs!r}")
    interpreter = _batched_interpreter(path, num_threads, 1)
    detail = interpreter.get_input_details()[0]
    images = _as_float_images(images, [None] + list(detail["shape"][1:]))
    if len(images) == 0:
        raise ValueError("`images` must hold at least one image to time")
    quantized = [quantize_input(images[i : i + 1], detail) for i in range(min(len(images), runs))]
    for i in range(3):
        interpreter.set_tensor(detail["index"], quantized[i % len(quantized)])
        interpreter.invoke()
    times = []
    for i in range(runs):
        interpreter.set_tensor(detail["index"], quantized[i % len(quantized)])
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def _class_indices(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.argmax(axis=1)
    return labels.reshape(-1).astype(np.int64)


def evaluate_tflite(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    keras_model: keras.Model | None = None,
    num_threads: int = 1,
    latency_runs: int = 100,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Accuracy, agreement with the Keras model, latency and size of a ``.tflite`` file.

    Args:
        path: the ``.tflite`` file.
        images: test images, ``uint8`` 0..255 or float ``[0, 1]``.
        labels: class indices ``(N,)`` / ``(N, 1)`` or one-hot ``(N, K)``.
        keras_model: the source model; adds ``keras_accuracy``,
            ``accuracy_drop_pp`` (Keras minus TFLite, percentage points),
            ``agreement`` (fraction of identical top-1 predictions) and
            ``max_abs_diff`` (largest output difference).
        num_threads: threads for the accuracy pass (latency always uses 1).
        latency_runs: single-image invokes timed for ``latency_ms``.
        batch_size: images per invoke for the accuracy pass.

    Returns:
        A dict with ``num_images``, ``accuracy``, ``latency_ms`` (median,
        single thread, batch 1), ``size_bytes`` and the Keras comparisons.

    Example:
        >>> evaluate_tflite("mnist_int8.tflite", x_test, y_test)["accuracy"]  # doctest: +SKIP
        0.99
    """
    y = _class_indices(labels)
    if len(y) != len(images):
        raise ValueError(f"`labels` has {len(y)} entries but `images` has {len(images)}")
    outputs = run_tflite(path, images, num_threads=num_threads, batch_size=batch_size)
    predictions = outputs.argmax(axis=1)
    result: dict[str, Any] = {
        "num_images": int(len(y)),
        "accuracy": float(np.mean(predictions == y)),
    }
    if keras_model is not None:
        floats = _as_float_images(images, keras_model.inputs[0].shape)
        reference = np.asarray(keras_model.predict(floats, batch_size=batch_size, verbose=0))
        reference = reference.astype(np.float32)
        keras_accuracy = float(np.mean(reference.argmax(axis=1) == y))
        result.update(
            keras_accuracy=keras_accuracy,
            accuracy_drop_pp=round(100.0 * (keras_accuracy - result["accuracy"]), 4),
            agreement=float(np.mean(reference.argmax(axis=1) == predictions)),
            max_abs_diff=float(np.max(np.abs(reference - outputs))) if len(y) else 0.0,
        )
    result["latency_ms"] = latency_ms(path, images, runs=latency_runs, num_threads=1)
    result["size_bytes"] = Path(path).stat().st_size
    return result


__all__ = [
    "ExportError",
    "ExportReport",
    "TensorInfo",
    "QUANTIZE_MODES",
    "INT8_IO_TYPES",
    "to_tflite",
    "export_saved_model",
    "float32_model",
    "run_tflite",
    "evaluate_tflite",
    "latency_ms",
    "labels_file",
    "read_labels",
    "embedded_metadata",
    "model_ops",
    "input_shape",
    "quantize_input",
    "dequantize_output",
]

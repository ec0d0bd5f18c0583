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

The batch dimension is stored as 1 (``batch_size=``): TensorFlow Lite Micro
never resizes tensors, and with a dynamic batch the converter stores
placeholder shapes that TFLM computes wrongly (see :func:`export_saved_model`).
Every int8 file is run under TFLM and LiteRT on images held out from
calibration before :func:`to_tflite` returns (:mod:`keras_effcnn.export.micro`); a
file the two runtimes disagree on, or one TFLM cannot run, raises
:class:`ExportError` naming the Keras layer.

Files are run with ``ai_edge_litert.interpreter.Interpreter`` (the
``tf.lite.Interpreter`` is deprecated): :func:`run_tflite`,
:func:`evaluate_tflite`.

The package's modules, one step each: ``convert`` (Keras -> SavedModel ->
``.tflite``), ``flatbuffer`` (edit the converted file, read what it
carries), ``diagnose`` (name the layer behind a failure), ``litert`` (run
with LiteRT), ``micro`` (run with TFLM, arena, C array) and ``report``.
Every public name is importable from ``keras_effcnn.export``.
"""

from keras_effcnn.export import micro
from keras_effcnn.export.convert import INT8_IO_TYPES, QUANTIZE_MODES, export_saved_model, float32_model, to_tflite
from keras_effcnn.export.flatbuffer import (
    LABELS_METADATA_NAME,
    embedded_metadata,
    labels_file,
    model_ops,
    read_labels,
)
from keras_effcnn.export.litert import (
    DEFAULT_BATCH_SIZE,
    dequantize_output,
    evaluate_tflite,
    input_shape,
    latency_ms,
    quantize_input,
    run_tflite,
)
from keras_effcnn.export.report import ExportError, ExportReport, TensorInfo

__all__ = [
    "ExportError",
    "ExportReport",
    "TensorInfo",
    "QUANTIZE_MODES",
    "INT8_IO_TYPES",
    "LABELS_METADATA_NAME",
    "DEFAULT_BATCH_SIZE",
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
    "micro",
]

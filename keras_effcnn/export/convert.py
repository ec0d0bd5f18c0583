"""Keras model -> SavedModel -> ``.tflite`` with TFLite builtin ops only: :func:`to_tflite`."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_effcnn.export.diagnose import _explain_failure, _explain_micro_failure
from keras_effcnn.export.flatbuffer import _finish_flatbuffer, _flatbuffer_ops, labels_file
from keras_effcnn.export.litert import _as_float_images, _io_details, _loads_with_xnnpack
from keras_effcnn.export.report import ExportError, ExportReport

QUANTIZE_MODES = (None, "float16", "dynamic", "int8")

INT8_IO_TYPES = (None, "int8", "uint8")


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
    batch_size: int | None = 1,
    softmax: bool = False,
    micro_check: bool = True,
    num_check: int = 200,
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
            float must already be in ``[0, 1]``), an ``(images, labels)`` pair
            of arrays, a ``tf.data.Dataset`` or any iterable of images, batches
            or ``(images, labels)`` pairs. From an array ``num_calibration``
            images are drawn at random (seed 0); from an iterable the first
            ``num_calibration`` are used. Up to ``num_check`` of the others
            (held out from calibration) check the file under TFLM.
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
        batch_size: the static batch dimension stored in the file (1, what a
            phone or a microcontroller runs), or ``None`` for a dynamic batch,
            which only LiteRT runs correctly (see :func:`export_saved_model`).
            LiteRT can still resize a static batch at run time.
        softmax: end the file with a ``SOFTMAX`` so that it outputs
            probabilities. The zoo's models output logits, and so does the
            file by default: the argmax is the same, and an int8 softmax output
            rounds probabilities to steps of 1/256, which can tie the top
            classes. Do not set it for a model that already ends in softmax.
        micro_check: with ``"int8"``: run the file under TensorFlow Lite
            Micro and LiteRT on the held-out images (on calibration images
            when none is left over) and raise
            :class:`ExportError`, naming the Keras layer, when TFLM cannot run
            it or their top-1 agreement is below
            :data:`keras_effcnn.export.micro.MIN_AGREEMENT`; the report gets the
            agreement, the accuracies (when labels are known) and the TFLM
            arena size. Needs ``batch_size=1``; without the ``tflite-micro``
            package (Linux x86-64 wheels) the check is skipped with a warning.
        num_check: held-out images for ``micro_check``, >= 1.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ValueError: bad arguments.
        ExportError: the model needs ops outside the TFLite builtin set, or
            (``micro_check``) the int8 file is wrong under TFLM; the message
            names the offending layers and ops.

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
    for name, value in (("num_calibration", num_calibration), ("num_check", num_check)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}")
    micro_check = micro_check and quantize == "int8"
    if micro_check and batch_size not in (1, None):
        raise ValueError(
            f"`micro_check` needs batch_size=1 (TFLM runs one image per invoke); got "
            f"batch_size={batch_size!r}: pass micro_check=False for a LiteRT-only file"
        )
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
    if softmax:
        model = keras.Model(model.inputs, keras.layers.Softmax(name="probabilities")(model.outputs[0]))

    calibration = check_images = check_labels = None
    if quantize == "int8":
        calibration, check_images, check_labels = _split_representative(
            representative_data, num_calibration, input_shape, held_out=num_check if micro_check else 0
        )

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
        if saved_model_dir is None or softmax:
            saved_model_dir = export_saved_model(model, Path(tmp) / "saved_model", batch_size=batch_size)
        try:
            flatbuffer = _convert_saved_model(saved_model_dir, configure)
        except _ConversionFailed as failure:
            raise _explain_failure(model, failure.error, configure, quantize) from failure.error

    ops = _flatbuffer_ops(flatbuffer)
    non_builtin = [op for op in ops if op.startswith("CUSTOM:")]
    if non_builtin:
        raise ExportError(f"converted model contains non-builtin ops {non_builtin}", ops=non_builtin)
    named, widened = _finish_flatbuffer(flatbuffer, labels, repair=quantize == "int8", strip_names=False)
    flatbuffer = named if keep_tensor_names else _finish_flatbuffer(named, None, repair=False, strip_names=True)[0]
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
        softmax=softmax,
    )
    from keras_effcnn.export import micro

    if micro_check and not micro.available():
        warnings.warn(
            f"{path} was not checked under TensorFlow Lite Micro: the tflite-micro package is not installed "
            "(pip install tflite-micro, Linux x86-64 wheels); pass micro_check=False to skip the check",
            stacklevel=2,
        )
        result.micro = {"ok": None, "error": "not checked: tflite-micro is not installed"}
    elif micro_check:
        held_out = len(check_images) > 0
        if not held_out:  # every image calibrated: the runtimes can still be compared on them
            check_images, check_labels = calibration[:num_check], None
        result.micro = {**micro.check_micro(path, check_images, check_labels), "held_out": held_out}
        if not result.micro["ok"]:
            raise _explain_micro_failure(model, path, named, result.micro, check_images)
    if not result.xnnpack:
        warnings.warn(
            f"{path} does not load with LiteRT's default XNNPACK CPU delegate (Android's default); "
            "it runs only on the reference kernels",
            stacklevel=2,
        )
    if report:
        result.write()
    return result


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


def export_saved_model(model: keras.Model, directory: str | Path, batch_size: int | None = 1) -> Path:
    """Write ``model``'s inference function as a TF SavedModel (the converter's input).

    The batch dimension is fixed to ``batch_size`` (1 by default). TensorFlow
    Lite Micro never resizes tensors: it runs the shapes stored in the file, and
    with a dynamic batch the converter stores placeholder shapes that are wrong
    for ops that move data into the batch dimension (the ``SPACE_TO_BATCH_ND`` /
    ``BATCH_TO_SPACE_ND`` pair of a dilated convolution computed a quarter of its
    output under TFLM). With a static batch the converter also folds that pair
    into one dilated ``DEPTHWISE_CONV_2D``. LiteRT still resizes the batch of
    such a file at run time (:func:`run_tflite` does).

    Args:
        model: a built Keras model.
        directory: where to write it.
        batch_size: the static batch dimension, or ``None`` for a dynamic one
            (LiteRT only: TFLM runs the stored placeholder shapes).

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        ExportError: tracing the model failed.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be an integer >= 1 or None; got {batch_size!r}")
    model = float32_model(model)
    signature = [
        keras.InputSpec(shape=(batch_size,) + tuple(t.shape[1:]), dtype=t.dtype, name=t.name) for t in model.inputs
    ]
    try:
        model.export(str(directory), format="tf_saved_model", verbose=False, input_signature=signature)
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
    return _split_representative(data, count, input_shape)[0]


def _split_representative(
    data: Any, count: int, input_shape: tuple, held_out: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Calibration images, and up to ``held_out`` other images (with labels if known) to check with.

    From an array (or an ``(images, labels)`` pair of arrays) ``count`` images
    are drawn at random (seed 0) and the held-out ones from the rest (seed 1);
    from an iterable the first ``count`` calibrate and the next ``held_out``
    are held out.
    """
    labels = None
    if _is_image_label_pair(data):
        data, labels = np.asarray(data[0]), np.asarray(data[1])
    if isinstance(data, np.ndarray):
        index = np.arange(len(data))
        if len(data) > count:
            index = np.sort(np.random.default_rng(0).choice(len(data), count, replace=False))
        rest = np.setdiff1d(np.arange(len(data)), index)
        check = np.sort(np.random.default_rng(1).permutation(rest)[:held_out])
        images = _as_float_images(data[index], input_shape, "representative_data")
        check_images = _as_float_images(data[check], input_shape, "representative_data")
        check_labels = None if labels is None else labels[check]
    else:
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            data = data.as_numpy_iterator()
        elif not isinstance(data, Iterable):
            raise ValueError(
                "`representative_data` must be a NumPy array, an (images, labels) pair of arrays, "
                f"a tf.data.Dataset or an iterable of images; got {type(data).__name__}"
            )
        chunks, label_chunks, total = [], [], 0
        for element in data:
            label = None
            if isinstance(element, (tuple, list)):
                element, label = element[0], (element[1] if len(element) > 1 else None)
            element = np.asarray(element)
            single = _is_single_image(element.shape, input_shape)
            if single:
                element = element[None]
            chunk = _as_float_images(element, input_shape, "representative_data")
            chunks.append(chunk[: count + held_out - total])
            if label is not None:
                label = np.asarray(label)
                label_chunks.append((label[None] if single else label)[: len(chunks[-1])])
            total += len(chunks[-1])
            if total >= count + held_out:
                break
        everything = np.concatenate(chunks) if chunks else np.zeros((0,) + tuple(input_shape[1:]), "float32")
        images, check_images = everything[:count], everything[count:]
        check_labels = None
        if label_chunks and len(label_chunks) == len(chunks):
            check_labels = np.concatenate(label_chunks)[count:]
    if len(images) == 0:
        raise ValueError("`representative_data` yielded no images")
    return images, check_images, check_labels


def _is_image_label_pair(data: Any) -> bool:
    return (
        isinstance(data, tuple) and len(data) == 2
        and all(isinstance(part, np.ndarray) for part in data)
        and data[0].ndim >= 3 and len(data[0]) == len(data[1])
    )


def _is_single_image(shape: tuple, input_shape: Sequence) -> bool:
    """Whether ``shape`` is one ``(H, W, C)`` image (or ``(H, W)`` for one channel)."""
    expected = tuple(input_shape[1:])

    def same(got, want):
        return len(got) == len(want) and all(w is None or w < 0 or g == w for g, w in zip(got, want))

    return same(shape, expected) or (expected[-1] == 1 and same(shape, expected[:-1]))

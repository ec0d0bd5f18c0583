"""Run ``.tflite`` files with LiteRT (``ai_edge_litert``): outputs, accuracy, latency.

The ``tf.lite.Interpreter`` is deprecated; files are run with
``ai_edge_litert.interpreter.Interpreter``, with its default XNNPACK CPU
delegate (as on Android) and the reference kernels as a fallback.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np

from keras_effcnn.export.report import TensorInfo

DEFAULT_BATCH_SIZE = 256


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


#: LiteRT's kernel sets: ``"xnnpack"`` (the default delegate, what phones run), ``"builtin"``
#: (the optimized built-in kernels, no delegate) and ``"reference"`` (the reference kernels,
#: which TFLM ports: on the shipped int8 files TFLM's top-1 equals theirs on every checked
#: image, while XNNPACK's rounding flips ~1 % of CIFAR-10 near-ties; docs/microcontrollers.md).
KERNELS = ("xnnpack", "builtin", "reference")


def _interpreter(path: str | Path, num_threads: int = 1, kernels: str = "xnnpack",
                 preserve_all_tensors: bool = False):
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "running .tflite files needs the LiteRT runtime: pip install 'keras-effcnn[litert]'"
        ) from error
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"`num_threads` must be an integer >= 1; got {num_threads!r}")
    if kernels not in KERNELS:
        raise ValueError(f"`kernels` must be one of {KERNELS}; got {kernels!r}")
    if kernels == "xnnpack":
        return Interpreter(model_path=str(path), num_threads=num_threads)
    resolver = OpResolverType.BUILTIN_REF if kernels == "reference" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(model_path=str(path), num_threads=num_threads, experimental_op_resolver_type=resolver,
                       experimental_preserve_all_tensors=preserve_all_tensors)


def _loads_with_xnnpack(path: str | Path) -> bool:
    try:
        _interpreter(path).allocate_tensors()
    except RuntimeError:
        return False
    return True


def _batched_interpreter(path: str | Path, num_threads: int, batch: int, kernels: str = "xnnpack"):
    """An interpreter with its first input resized to ``batch`` and tensors allocated.

    With ``kernels="xnnpack"`` it falls back, with a warning, to the built-in
    kernels when XNNPACK rejects the model.
    """
    for choice in (kernels, "builtin") if kernels == "xnnpack" else (kernels,):
        interpreter = _interpreter(path, num_threads, kernels=choice)
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], [batch] + list(detail["shape"][1:]))
        try:
            interpreter.allocate_tensors()
            return interpreter
        except RuntimeError as error:
            if choice != "xnnpack":
                raise
            warnings.warn(f"XNNPACK rejected {path} ({error}); using the built-in kernels", stacklevel=3)


def _io_details(path: str | Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    interpreter = _interpreter(path)
    return (
        [_tensor_info(d) for d in interpreter.get_input_details()],
        [_tensor_info(d) for d in interpreter.get_output_details()],
    )


def input_shape(path: str | Path) -> tuple[int | None, ...]:
    """Input shape of a ``.tflite`` file, ``None`` for a dynamic (batch) dimension."""
    shape = _io_details(path)[0][0].shape
    return tuple(None if d < 0 else d for d in shape)


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
    kernels: str = "xnnpack",
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
        kernels: ``"xnnpack"`` (the default delegate, as on phones; the built-in
            kernels if XNNPACK rejects the file), ``"builtin"`` or ``"reference"``
            (LiteRT's reference kernels, the ones TFLM ports).

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
    interpreter = _batched_interpreter(path, num_threads, batch, kernels)
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
    micro: bool = False,
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
        micro: also run the file under TensorFlow Lite Micro (one image per
            invoke, slow: ~25 ms per CIFAR-10 image on one core); adds
            ``accuracy_tflm``, ``agreement_tflm`` (top-1, TFLM vs LiteRT) and
            ``max_abs_diff_tflm``.

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
    if micro:
        from keras_effcnn.export.micro import run_micro

        micro_outputs = run_micro(path, images)
        result.update(
            accuracy_tflm=float(np.mean(micro_outputs.argmax(axis=1) == y)),
            agreement_tflm=float(np.mean(micro_outputs.argmax(axis=1) == predictions)),
            max_abs_diff_tflm=float(np.max(np.abs(micro_outputs - outputs), initial=0.0)),
        )
    result["latency_ms"] = latency_ms(path, images, runs=latency_runs, num_threads=1)
    result["size_bytes"] = Path(path).stat().st_size
    return result

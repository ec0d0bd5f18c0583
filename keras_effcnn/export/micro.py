"""TensorFlow Lite Micro (TFLM): run a ``.tflite`` file as a microcontroller does.

A file that LiteRT runs correctly is not necessarily right under TFLM: TFLM
has its own (reference) kernels, never resizes tensors and runs the shapes
stored in the file. This module runs a file with the TFLM Python interpreter
(PyPI ``tflite-micro``), measures the tensor arena it needs, checks it
against LiteRT and names the Keras layer behind the first operator where the
two runtimes part ways, and writes the file as a C array for a firmware.

Example:
    >>> from keras_effcnn.export import micro
    >>> check = micro.check_micro("model_int8.tflite", images)  # doctest: +SKIP
    >>> check["agreement"], check["arena_bytes"]  # doctest: +SKIP
    (1.0, 93488)
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_effcnn.export import flatbuffer, litert

# Below this top-1 agreement between TFLM and LiteRT's reference kernels (which TFLM's kernels
# port) on the checked images the export is wrong under TFLM. Correct int8 files agreed on every
# one of 1,000 CIFAR-10 and 2,000 MNIST test images (benchmarks/results/int8_fidelity.md); the
# margin tolerates a rare near-tie flip (2 in 200), while a wrong op flips far more.
# Against XNNPACK (what phones run) agreement is only ~99 %: it rounds requantization differently.
MIN_AGREEMENT = 0.99
# The arena for a firmware: the host's recorded total (64-bit pointers, so an upper
# bound for a 32-bit MCU) rounded up to this alignment.
ARENA_ALIGNMENT = 16

# MicroMutableOpResolver method names that are not the CamelCase of the builtin name.
_FLOAT32 = 0  # TensorType.FLOAT32 in the TFLite schema
_RESOLVER_NAMES = {"CUMSUM": "CumSum", "PADV2": "PadV2", "BATCH_MATMUL": "BatchMatMul"}


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "running a .tflite file under TensorFlow Lite Micro needs its Python interpreter: "
            "pip install tflite-micro (Linux x86-64), or pass micro_check=False to to_tflite"
        ) from error
    return runtime


def available() -> bool:
    """Whether the TFLM Python interpreter (PyPI ``tflite-micro``, Linux x86-64 wheels) is installed."""
    import importlib.util

    return importlib.util.find_spec("tflite_micro") is not None


def micro_interpreter(model: str | Path | bytes, arena_size: int | None = None, preserve_all_tensors: bool = False):
    """A TFLM Python interpreter for a ``.tflite`` file or its bytes.

    Args:
        model: the file, or its bytes.
        arena_size: tensor arena in bytes (default: TFLM's own guess, 10x the
            file size).
        preserve_all_tensors: keep every intermediate tensor readable (for
            :func:`first_divergent_op`); the arena is then not recorded.

    Returns:
        A ``tflite_micro`` ``Interpreter``.

    Raises:
        RuntimeError: TFLM cannot run the file (an op it lacks, a bad arena).
    """
    runtime = _runtime()
    data = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    config = (runtime.InterpreterConfig.kPreserveAllTensors if preserve_all_tensors
              else runtime.InterpreterConfig.kAllocationRecording)
    # TFLM logs why it cannot run a file (the op it lacks) on stderr, not in the exception.
    with _captured_stderr() as log:
        try:
            return runtime.Interpreter.from_bytes(bytes(data), arena_size=arena_size, intrepreter_config=config)
        except RuntimeError as error:
            failure = error
    said = " ".join(line.strip() for line in log[0].splitlines() if line.strip() and "absl::" not in line)
    raise RuntimeError(f"{failure}: {said}" if said else str(failure)) from failure


def run_micro(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Run a single-input ``.tflite`` classifier under TFLM, one image per invoke.

    Integer inputs are quantized and integer outputs dequantized as in
    :func:`keras_effcnn.export.run_tflite`, so both return the same scale.

    Args:
        path: the ``.tflite`` file (its batch dimension must be 1).
        images: ``uint8`` 0..255 or float ``[0, 1]`` images.

    Returns:
        ``(N, num_outputs)`` float32 outputs.
    """
    interpreter = micro_interpreter(path)
    detail = _detail(interpreter.get_input_details(0))
    out_detail = _detail(interpreter.get_output_details(0))
    if detail["shape"][0] != 1:
        raise ValueError(
            f"{path} has batch dimension {detail['shape'][0]}; TFLM runs one image per invoke: "
            "export with batch_size=1"
        )
    images = litert._as_float_images(images, [None] + list(detail["shape"][1:]))
    outputs = np.zeros((len(images),) + tuple(out_detail["shape"][1:]), np.float32)
    for i in range(len(images)):
        interpreter.set_input(litert.quantize_input(images[i : i + 1], detail), 0)
        interpreter.invoke()
        outputs[i] = litert.dequantize_output(interpreter.get_output(0), out_detail)[0]
    return outputs


def latency_ms(path: str | Path, images: np.ndarray, runs: int = 100) -> float:
    """Median wall time of ``runs`` single-image TFLM invokes on this CPU, in milliseconds.

    TFLM's portable reference kernels through its Python interpreter: a figure
    to compare models with, not the latency of a microcontroller. Three
    warm-up invokes are not timed; the images are cycled through.

    Args:
        path: the ``.tflite`` file (batch 1).
        images: at least one image (``uint8`` or float ``[0, 1]``).
        runs: timed invokes, >= 1.

    Returns:
        The median latency in ms.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"`runs` must be an integer >= 1; got {runs!r}")
    interpreter = micro_interpreter(path)
    detail = _detail(interpreter.get_input_details(0))
    floats = litert._as_float_images(images[:runs], [None] + list(detail["shape"][1:]))
    if len(floats) == 0:
        raise ValueError("`images` must hold at least one image to time")
    quantized = [litert.quantize_input(floats[i : i + 1], detail) for i in range(len(floats))]
    times = []
    for i in range(runs + 3):
        interpreter.set_input(quantized[i % len(quantized)], 0)
        start = time.perf_counter()
        interpreter.invoke()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def _detail(detail: dict) -> dict:
    """A TFLM tensor detail in the form of a LiteRT one (``quantization`` = (scale, zero_point))."""
    q = detail.get("quantization_parameters", {})
    scales, zero_points = q.get("scales", []), q.get("zero_points", [])
    scale = float(scales[0]) if len(scales) else 0.0
    zero_point = int(zero_points[0]) if len(zero_points) else 0
    return {"shape": np.asarray(detail["shape"]), "dtype": detail["dtype"], "quantization": (scale, zero_point)}


@contextlib.contextmanager
def _captured_stderr():
    """Capture what C++ code writes to file descriptor 2 (TFLM's logs)."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        captured: list[str] = []
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


def arena_bytes(path: str | Path) -> int:
    """Tensor arena a firmware needs for ``path``: TFLM's recorded total, aligned.

    Runs one invoke with TFLM's recording allocator and reads its public
    allocation report (``Interpreter.print_allocations``). The figure is
    measured on this (64-bit) host; a 32-bit MCU needs a little less.

    Args:
        path: the ``.tflite`` file.

    Returns:
        Bytes, rounded up to a multiple of 16.
    """
    interpreter = micro_interpreter(path)
    detail = _detail(interpreter.get_input_details(0))
    interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
    interpreter.invoke()
    with _captured_stderr() as captured:
        interpreter.print_allocations()
    found = _ARENA_TOTAL.search("".join(captured))
    if found is None:
        raise RuntimeError(f"TFLM printed no arena total for {path}: {''.join(captured)[:300]!r}")
    return -(-int(found.group(1)) // ARENA_ALIGNMENT) * ARENA_ALIGNMENT


def resolver_name(op: str) -> str:
    """The ``MicroMutableOpResolver`` method for a builtin op: ``"CONV_2D"`` -> ``"AddConv2D"``."""
    # "2D" keeps its case (AddConv2D), every other word is capitalised (AddSpaceToBatchNd).
    words = (part if part[:1].isdigit() else part.capitalize() for part in op.split("_"))
    return "Add" + _RESOLVER_NAMES.get(op, "".join(words))


def first_divergent_op(path: str | Path, images: np.ndarray, model: keras.Model | None = None) -> dict[str, Any]:
    """The operator whose output departs most from LiteRT's reference kernels under TFLM.

    Both interpreters keep every tensor; for each operator the largest output
    difference (in steps of the output's quantization scale) is compared with
    the largest difference of its inputs: the operator that adds the most is
    the one TFLM computes differently. Its output tensor name, kept by
    ``to_tflite(..., keep_tensor_names=True)``, names the Keras layer.

    Args:
        path: a ``.tflite`` file with batch 1, ideally with tensor names.
        images: a few images (uint8 or float ``[0, 1]``).
        model: the Keras model, to resolve the tensor name to its layer.

    Returns:
        A dict with ``index``, ``op``, ``tensor``, ``layer`` (``None`` if
        unknown), ``output_steps`` and ``input_steps``.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    from keras_effcnn.export import diagnose  # diagnose imports this module

    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    graph = flat.subgraphs[0]
    tflm = micro_interpreter(path, preserve_all_tensors=True)
    reference = litert._interpreter(path, kernels="reference", preserve_all_tensors=True)
    reference.allocate_tensors()
    detail = reference.get_input_details()[0]
    images = litert._as_float_images(images, [None] + list(detail["shape"][1:]))
    steps: dict[int, float] = {}
    for i in range(len(images)):
        x = litert.quantize_input(images[i : i + 1], detail)
        tflm.set_input(x, 0)
        tflm.invoke()
        reference.set_tensor(detail["index"], x)
        reference.invoke()
        for op in graph.operators:
            for t in op.outputs:
                a = np.asarray(tflm.GetTensor(t, 0)["tensor_data"], np.float64).reshape(-1)
                b = np.asarray(reference.get_tensor(t), np.float64).reshape(-1)
                if a.size != b.size:
                    diff = np.inf
                elif graph.tensors[t].type == _FLOAT32:  # float tensors: relative, in 1/255
                    diff = float(np.max(np.abs(a - b), initial=0.0) / (np.max(np.abs(b), initial=0.0) + 1e-12) * 255)
                else:  # integer tensors: already in quantization steps
                    diff = float(np.max(np.abs(a - b), initial=0.0))
                steps[t] = max(steps.get(t, 0.0), diff)
    best, best_gain = None, -np.inf
    for index, op in enumerate(graph.operators):
        out = max(steps[t] for t in op.outputs)
        inputs = max((steps.get(t, 0.0) for t in op.inputs if t >= 0), default=0.0)
        gain = out - inputs if np.isfinite(out) else np.inf
        if gain > best_gain:
            best, best_gain = (index, op, out, inputs), gain
    index, op, out, inputs = best
    tensor = flatbuffer._text(graph.tensors[op.outputs[0]].name or b"")
    layer = None
    if model is not None and tensor:
        chain = diagnose._layers_from_scope(model, tensor.split(";")[0])
        layer = diagnose._describe(chain) if chain else None
    return {
        "index": index,
        "op": flatbuffer_utils.opcode_to_name(flat, op.opcodeIndex),
        "tensor": tensor,
        "layer": layer,
        "output_steps": out,
        "input_steps": inputs,
    }


def check_micro(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> dict[str, Any]:
    """Run ``path`` under TFLM and LiteRT on the same images and compare.

    TFLM is compared with LiteRT's reference kernels (``kernels="reference"``), the
    kernels TFLM's own are ports of, so a correct file agrees on (nearly) every image;
    LiteRT's default XNNPACK kernels round differently and are reported beside them.

    Args:
        path: a ``.tflite`` file with batch 1.
        images: held-out images (not used for calibration), uint8 or float.
        labels: their class indices, for the accuracies (optional).
        min_agreement: the top-1 agreement with the reference kernels below which
            ``ok`` is ``False``.

    Returns:
        A dict: ``ok``, ``error`` (why TFLM could not run the file, or
        ``None``), ``num_images``, ``kernels`` (``"reference"``), ``agreement`` and
        ``max_abs_diff`` (TFLM vs LiteRT's reference kernels), ``agreement_xnnpack``
        (top-1, TFLM vs LiteRT's default kernels), ``accuracy_tflm`` /
        ``accuracy_litert`` (default kernels; with labels) and ``arena_bytes``.

    Example:

    ```python
    check = check_micro("model_int8.tflite", x_test[:200], y_test[:200])
    assert check["ok"], check
    ```
    """
    result: dict[str, Any] = {"ok": False, "error": None, "num_images": int(len(images))}
    try:
        micro_outputs = run_micro(path, images)
        result["arena_bytes"] = arena_bytes(path)
    except (RuntimeError, ValueError) as error:
        result["error"] = str(error)[:500]
        return result
    reference_outputs = litert.run_tflite(path, images, kernels="reference")
    litert_outputs = litert.run_tflite(path, images)
    agreement = float(np.mean(micro_outputs.argmax(1) == reference_outputs.argmax(1)))
    result.update(
        kernels="reference",
        agreement=agreement,
        max_abs_diff=float(np.max(np.abs(micro_outputs - reference_outputs), initial=0.0)),
        agreement_xnnpack=float(np.mean(micro_outputs.argmax(1) == litert_outputs.argmax(1))),
        ok=agreement >= min_agreement,
    )
    if labels is not None:
        y = litert._class_indices(labels)
        result.update(
            accuracy_tflm=float(np.mean(micro_outputs.argmax(1) == y)),
            accuracy_litert=float(np.mean(litert_outputs.argmax(1) == y)),
        )
    return result


def missing_ops(error: str) -> list[str]:
    """Builtin op names a TFLM error says it lacks or cannot prepare (for this tensor type)."""
    lacking = re.findall(r"[Dd]idn't find op for builtin opcode '(\w+)'", error)
    unprepared = re.findall(r"Node (\w+) \(number \d+\) failed to prepare", error)
    return sorted(set(lacking + unprepared))


def write_c_array(
    path: str | Path,
    out_dir: str | Path | None = None,
    name: str | None = None,
    arena_size: int | None = None,
) -> tuple[Path, Path]:
    """Write a ``.tflite`` file as a C++ array (``<name>.cc`` / ``<name>.h``), as TFLM examples do.

    The array is ``alignas(16) const unsigned char g_<name>_model[]`` (TFLM
    reads the flatbuffer in place, so it must be 16-byte aligned); the header
    declares it with its length, the arena size constant
    ``k<Name>TensorArenaSize`` and, when TFLM's headers are on the include
    path, ``<Name>OpResolver`` and ``Register<Name>Ops`` with the
    ``MicroMutableOpResolver`` lines for exactly the file's ops.

    Args:
        path: the ``.tflite`` file.
        out_dir: where to write (default: beside the file).
        name: C identifier stem (default: the file stem, sanitised).
        arena_size: arena bytes (default: measured with :func:`arena_bytes`).

    Returns:
        The ``.cc`` and ``.h`` paths.

    Example:
        >>> cc, h = write_c_array("mnist_int8.tflite", "firmware/")  # doctest: +SKIP
    """
    path = Path(path)
    data = path.read_bytes()
    name = re.sub(r"\W", "_", name or path.stem)
    if name[0].isdigit():
        name = "model_" + name
    camel = "".join(part.capitalize() for part in name.split("_") if part)
    out_dir = Path(out_dir) if out_dir is not None else path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    arena = arena_bytes(path) if arena_size is None else int(arena_size)
    ops = [op for op in flatbuffer.model_ops(path) if not op.startswith("CUSTOM:")]
    guard = f"{name.upper()}_MODEL_DATA_H_"
    resolver = "\n".join(f"  TF_LITE_ENSURE_STATUS(op_resolver.{resolver_name(op)}());" for op in ops)
    header = f"""// Generated by keras_effcnn.export.micro.write_c_array from {path.name} ({len(data)} bytes).
#ifndef {guard}
#define {guard}

#include <cstddef>

// The flatbuffer, 16-byte aligned as TFLM requires; keep it in flash (const).
extern const unsigned char g_{name}_model[];
extern const unsigned int g_{name}_model_len;

// Tensor arena measured by TFLM's recording allocator on a 64-bit host (an upper bound
// for 32-bit MCUs): declare `alignas(16) static uint8_t arena[k{camel}TensorArenaSize];`.
constexpr size_t k{camel}TensorArenaSize = {arena};

// Ops: {", ".join(ops)}.
#if __has_include("tensorflow/lite/micro/micro_mutable_op_resolver.h")
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
using {camel}OpResolver = tflite::MicroMutableOpResolver<{len(ops)}>;
inline TfLiteStatus Register{camel}Ops({camel}OpResolver& op_resolver) {{
{resolver}
  return kTfLiteOk;
}}
#endif

#endif  // {guard}
"""
    rows = [
        "  " + ", ".join(f"0x{byte:02x}" for byte in data[start : start + 12]) + ","
        for start in range(0, len(data), 12)
    ]
    source = (
        f"// Generated by keras_effcnn.export.micro.write_c_array from {path.name}.\n"
        f'#include "{name}.h"\n\n'
        f"alignas(16) const unsigned char g_{name}_model[] = {{\n" + "\n".join(rows) + "\n};\n"
        f"const unsigned int g_{name}_model_len = {len(data)};\n"
    )
    h_path, cc_path = out_dir / f"{name}.h", out_dir / f"{name}.cc"
    h_path.write_text(header)
    cc_path.write_text(source)
    return cc_path, h_path


def read_c_array(cc_path: str | Path) -> bytes:
    """The bytes of the array in a ``.cc`` file written by :func:`write_c_array`."""
    text = Path(cc_path).read_text()
    body = text[text.index("{") + 1 : text.index("};")]
    return bytes(int(value, 16) for value in re.findall(r"0x([0-9a-fA-F]{2})", body))


__all__ = [
    "MIN_AGREEMENT",
    "available",
    "micro_interpreter",
    "run_micro",
    "latency_ms",
    "arena_bytes",
    "resolver_name",
    "first_divergent_op",
    "check_micro",
    "missing_ops",
    "write_c_array",
    "read_c_array",
]


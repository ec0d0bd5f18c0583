"""Name the Keras layer behind a failed export.

Two failures: the converter rejects a TensorFlow op (the layer comes from the
op's location in the converter's message, else from converting each layer
alone), or TensorFlow Lite Micro cannot run the int8 file or computes it
differently from LiteRT (the layer comes from the named output tensor of the
first operator where the two runtimes part ways).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_effcnn.export.flatbuffer import _text
from keras_effcnn.export.report import ExportError

# A layer-by-layer probe converts each layer alone; cap it so a failing export of a
# large model still ends in seconds.
_MAX_PROBED_LAYERS = 64


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

    from keras_effcnn.export.convert import _convert_saved_model, _ConversionFailed, export_saved_model

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


def _explain_micro_failure(model, path: Path, named: bytes, check: dict, images: np.ndarray) -> ExportError:
    """Name the layer behind a file that TFLM cannot run or computes differently from LiteRT."""
    from keras_effcnn.export import micro

    with tempfile.TemporaryDirectory(prefix="keras_effcnn_micro_") as tmp:
        named_path = Path(tmp) / path.name
        named_path.write_bytes(named)
        if check.get("error"):
            ops = micro.missing_ops(check["error"])
            layers = _layers_of_ops(model, named_path, ops)
            what = f"TensorFlow Lite Micro cannot run it ({check['error']})"
        else:
            culprit = micro.first_divergent_op(named_path, images[:4], model)
            ops = [culprit["op"]]
            layers = [culprit["layer"]] if culprit["layer"] else []
            what = (
                f"TensorFlow Lite Micro and LiteRT's reference kernels agree on only {check['agreement']:.1%} of "
                f"{check['num_images']} held-out images (< {micro.MIN_AGREEMENT:.0%}); the first op TFLM "
                f"computes differently is {culprit['op']} (output off by {culprit['output_steps']:g} steps "
                f"with inputs off by {culprit['input_steps']:g})"
            )
    where = f" in layer(s) {', '.join(layers)}" if layers else ""
    return ExportError(
        f"{path} is wrong under TensorFlow Lite Micro{where}: {what}. Replace the layer with one whose "
        "ops TFLM supports (see docs/microcontrollers.md), or pass micro_check=False for a LiteRT-only file",
        layers=layers, ops=ops,
    )


def _layers_of_ops(model, path: Path, ops: Sequence[str]) -> list[str]:
    """The Keras layers whose (named) output tensors come from builtin ops ``ops``."""
    from ai_edge_litert.tools import flatbuffer_utils

    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    found: dict[str, None] = {}
    for graph in flat.subgraphs:
        for op in graph.operators:
            if flatbuffer_utils.opcode_to_name(flat, op.opcodeIndex) in ops:
                name = _text(graph.tensors[op.outputs[0]].name or b"").split(";")[0]
                chain = _layers_from_scope(model, name)
                if chain:
                    found[_describe(chain)] = None
    return list(found)

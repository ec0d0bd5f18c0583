"""What an export wrote and how the file did: :class:`ExportReport`, :class:`TensorInfo`, :class:`ExportError`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
        softmax: whether the file ends with a softmax (probabilities) rather
            than the model's logits.
        micro: the TensorFlow Lite Micro check of an int8 file on images held
            out from calibration (:func:`keras_effcnn.export.micro.check_micro`):
            ``agreement`` with LiteRT's reference kernels (``agreement_xnnpack``
            with its default ones), ``accuracy_tflm`` / ``accuracy_litert``
            when labels are known, ``arena_bytes`` (the RAM a firmware gives
            TFLM, besides the file itself in flash).
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
    softmax: bool = False
    micro: dict[str, Any] | None = None
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
        values = "probabilities (softmax)" if self.softmax else "logits (apply a softmax for probabilities)"
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
            f"| output values | {values} |",
            f"| flash (the file) | {self.size_bytes} bytes |",
        ]
        if self.num_calibration:
            lines.append(f"| calibration images | {self.num_calibration} |")
        if self.labels_path:
            lines.append(f"| labels | `{Path(self.labels_path).name}` |")
        if self.widened_tensors:
            lines.append(f"| widened int8 scales | {len(self.widened_tensors)} degenerate activation(s) |")
        lines.append(f"| loads with XNNPACK | {'yes' if self.xnnpack else 'NO (reference kernels only)'} |")
        if self.micro and self.micro.get("ok") is None:
            lines.append(f"| TFLM check | {self.micro.get('error')} |")
        elif self.micro:
            lines.append(f"| TFLM arena (RAM) | {self.micro.get('arena_bytes')} bytes |")
            for key in ("num_images", "agreement", "agreement_xnnpack", "accuracy_tflm", "accuracy_litert"):
                if key in self.micro:
                    images = "held-out" if self.micro.get("held_out", True) else "calibration"
                    lines.append(f"| TFLM check: {key} ({images} images) | {_format_value(self.micro[key])} |")
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

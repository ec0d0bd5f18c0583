"""Robustness report: accuracy under common corruptions, and shift consistency.

**Corruptions** follow Hendrycks & Dietterich, *Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations* (ICLR 2019,
arXiv 1903.12261), with the parameters of their CIFAR-10-C script (also used
here for 28x28 MNIST). Images are float in ``[0, 1]``; every corruption clips
its result back to ``[0, 1]``; severity 0 is the identity.

============== ================================================ ========================================
name           operation                                        parameter for severity 1, 2, 3, 4, 5
============== ================================================ ========================================
gaussian_noise ``x + N(0, sigma^2)`` per pixel and channel       sigma = 0.04, 0.06, 0.08, 0.09, 0.10
blur           Gaussian blur per channel (``scipy.ndimage``'s    sigma = 0.4, 0.6, 0.7, 0.8, 1.0 px
               kernel: radius ``int(4 sigma + 0.5)``, edge
               pixels repeated at the border)
contrast       ``(x - m) c + m``, ``m`` = channel mean          c = 0.75, 0.5, 0.4, 0.3, 0.15
brightness     HSV value ``V -> min(V + c, 1)``, hue and          c = 0.05, 0.1, 0.15, 0.2, 0.3
               saturation kept (grayscale: ``x + c``)
============== ================================================ ========================================

**Shift consistency** follows Zhang, *Making Convolutional Networks
Shift-Invariant Again* (ICML 2019, arXiv 1904.11486): for every image two
offsets ``(dy, dx)`` are drawn independently and uniformly from
``{-k, ..., k}^2`` and the score is the fraction of images whose predicted class
is the same for both shifted copies. Zhang shifts crops of a larger image; the
28x28 and 32x32 images here have no margin, so the default shift is *circular*
(``np.roll``: what leaves one edge re-enters at the opposite one, no pixel is
invented); ``shift_mode="zero"`` fills the uncovered border with zeros instead.

Example:

```python
from keras_effcnn import data, recipes, robustness

model = recipes.mnist_1500(weights="mnist")
_, (x_test, y_test) = data.load_arrays("mnist", "../shared/data")
report = robustness.evaluate_robustness(model, x_test[:2000], y_test[:2000])
print(report.to_markdown())
report.write("runs/robustness")       # robustness.json, robustness.md, robustness.png
```
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SEVERITY_PARAMETERS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
}
CORRUPTIONS = tuple(SEVERITY_PARAMETERS)
SHIFT_MODES = ("circular", "zero")
MAX_SEVERITY = 5


# ----------------------------------------------------------------------------- inputs


def to_float_images(images: Any) -> np.ndarray:
    """``(N, H, W, C)`` float32 images in ``[0, 1]`` from uint8 0..255 or float 0..1 input."""
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"`images` must have shape (N, height, width, channels); got {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"`images` must be uint8 (0..255) or float (0..1); got dtype {x.dtype}")
    if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(f"float `images` must lie in [0, 1]; got values in [{x.min():g}, {x.max():g}]")
    return x.astype(np.float32, copy=False)


def _class_indices(labels: Any, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if len(y) != n:
        raise ValueError(f"{n} images but {len(y)} labels; there must be one label per image")
    return y.astype(np.int64)


# ----------------------------------------------------------------------------- corruptions


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"`severity` must be an integer in [0, {MAX_SEVERITY}]; got {severity!r}")
    return int(severity)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian kernel ``scipy.ndimage.gaussian_filter`` uses."""
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    kernel = gaussian_kernel(sigma)
    r = len(kernel) // 2
    out = x.astype(np.float64)
    for axis in (1, 2):  # separable: rows, then columns
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        size = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + size), axis=axis) for i, w in enumerate(kernel))
    return out


def _brightness(x: np.ndarray, c: float) -> np.ndarray:
    # For fixed hue and saturation, HSV -> RGB is linear in V, so raising V to V'
    # scales every channel by V'/V; a black pixel (V = 0, S = 0) becomes grey V'.
    v = x.max(axis=-1, keepdims=True)
    v_new = np.clip(v + c, 0.0, 1.0)
    safe = np.where(v > 0, v, 1.0)
    return np.where(v > 0, x * (v_new / safe), v_new)


def corrupt(images: Any, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """Applies one corruption at one severity (see the module docstring for the formulas).

    Args:
        images: ``(N, H, W, C)`` uint8 0..255 or float ``[0, 1]`` images.
        corruption: one of :data:`CORRUPTIONS`.
        severity: 0 (identity) to 5.
        seed: seed of the noise (only ``gaussian_noise`` is random).

    Returns:
        float32 ``(N, H, W, C)`` images in ``[0, 1]``.

    Example:
        >>> x = np.full((1, 4, 4, 1), 0.5, np.float32)
        >>> float(corrupt(x, "brightness", 2)[0, 0, 0, 0])
        0.6
    """
    if corruption not in SEVERITY_PARAMETERS:
        raise ValueError(f"`corruption` must be one of {CORRUPTIONS}; got {corruption!r}")
    severity = _check_severity(severity)
    x = to_float_images(images)
    if severity == 0:
        return x.copy()
    c = SEVERITY_PARAMETERS[corruption][severity - 1]
    if corruption == "gaussian_noise":
        out = x + np.random.default_rng(seed).normal(0.0, c, size=x.shape)
    elif corruption == "blur":
        out = _blur(x, c)
    elif corruption == "contrast":
        mean = x.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
        out = (x - mean) * c + mean
    else:
        out = _brightness(x.astype(np.float64), c)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def shift(images: np.ndarray, dy: Any, dx: Any, mode: str = "circular") -> np.ndarray:
    """Moves every image ``i`` down by ``dy[i]`` and right by ``dx[i]`` pixels.

    Args:
        images: ``(N, H, W, C)`` array.
        dy, dx: one offset for all images, or one per image (negative: up / left).
        mode: ``"circular"`` (pixels wrap around) or ``"zero"`` (the uncovered
            border is zero, pixels moved past the edge are dropped).

    Returns:
        The shifted images, same shape and dtype.

    Example:
        >>> shift(np.arange(4).reshape(1, 1, 4, 1), 0, 1)[0, 0, :, 0].tolist()
        [3, 0, 1, 2]
    """
    if mode not in SHIFT_MODES:
        raise ValueError(f"`mode` must be one of {SHIFT_MODES}; got {mode!r}")
    x = np.asarray(images)
    n, h, w = x.shape[:3]
    dy = np.broadcast_to(np.asarray(dy, np.int64), (n,))
    dx = np.broadcast_to(np.asarray(dx, np.int64), (n,))
    # Output pixel (r, c) reads input pixel (r - dy, c - dx): one fancy-indexing gather.
    rows = np.arange(h)[None, :] - dy[:, None]
    cols = np.arange(w)[None, :] - dx[:, None]
    if mode == "circular":
        return x[np.arange(n)[:, None, None], (rows % h)[:, :, None], (cols % w)[:, None, :]]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    out = x[np.arange(n)[:, None, None], np.clip(rows, 0, h - 1)[:, :, None], np.clip(cols, 0, w - 1)[:, None, :]]
    return np.where(inside[..., None], out, np.zeros((), x.dtype))


# ----------------------------------------------------------------------------- the report


@dataclasses.dataclass
class RobustnessReport:
    """Accuracy under corruptions and shift consistency of one model.

    Attributes:
        model_name: the model's name.
        n_images: images evaluated.
        clean_accuracy: top-1 accuracy on the unmodified images.
        corruption_accuracy: ``{corruption: {severity: accuracy}}``.
        shift_consistency: ``{k: fraction of images whose two random shifts in
            [-k, k]^2 get the same predicted class}``.
        shift_mode: ``"circular"`` or ``"zero"``.
        seed: seed of the noise and of the shift offsets.
    """

    model_name: str
    n_images: int
    clean_accuracy: float
    corruption_accuracy: dict[str, dict[int, float]]
    shift_consistency: dict[int, float]
    shift_mode: str = "circular"
    seed: int = 0

    @property
    def mean_corruption_accuracy(self) -> float:
        """Accuracy averaged over every corruption and severity evaluated."""
        values = [a for by_severity in self.corruption_accuracy.values() for a in by_severity.values()]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self) -> dict:
        return {
            "model_name": self.model_name, "n_images": self.n_images, "clean_accuracy": self.clean_accuracy,
            "corruption_accuracy": {c: {str(s): a for s, a in v.items()} for c, v in self.corruption_accuracy.items()},
            "mean_corruption_accuracy": self.mean_corruption_accuracy,
            "shift_consistency": {str(k): v for k, v in self.shift_consistency.items()},
            "shift_mode": self.shift_mode, "seed": self.seed,
            "severity_parameters": {c: list(SEVERITY_PARAMETERS[c]) for c in self.corruption_accuracy},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "RobustnessReport":
        return cls(d["model_name"], int(d["n_images"]), float(d["clean_accuracy"]),
                   {c: {int(s): float(a) for s, a in v.items()} for c, v in d["corruption_accuracy"].items()},
                   {int(k): float(v) for k, v in d["shift_consistency"].items()}, d["shift_mode"], int(d["seed"]))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_markdown(self) -> str:
        """Two markdown tables: accuracy per corruption and severity, and shift consistency."""
        severities = sorted({s for v in self.corruption_accuracy.values() for s in v})
        lines = [f"Robustness of `{self.model_name}` on {self.n_images} test images "
                 f"(clean accuracy {self.clean_accuracy:.4f})", ""]
        if severities:
            lines += ["| corruption | " + " | ".join(f"severity {s}" for s in severities) + " | mean |",
                      "|---|" + "---:|" * (len(severities) + 1)]
            for name, by_severity in self.corruption_accuracy.items():
                cells = [f"{by_severity[s]:.4f}" if s in by_severity else "" for s in severities]
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(list(by_severity.values())):.4f} |")
            lines += ["| **all** | " + " | ".join("" for _ in severities)
                      + f" | {self.mean_corruption_accuracy:.4f} |", ""]
        if self.shift_consistency:
            lines += [f"| max shift k (px, {self.shift_mode}) | consistency |", "|---:|---:|"]
            lines += [f"| {k} | {v:.4f} |" for k, v in sorted(self.shift_consistency.items())]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike) -> Path:
        """Accuracy against severity per corruption, and consistency against shift, as a PNG."""
        # The object-oriented Agg canvas leaves pyplot's global backend alone.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 4))
        FigureCanvasAgg(fig)
        ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for name, by_severity in self.corruption_accuracy.items():
            s = [0] + sorted(by_severity)
            ax.plot(s, [self.clean_accuracy] + [by_severity[k] for k in s[1:]], marker="o", label=name)
        ax.set_xticks(range(0, 1 + max([0] + [s for v in self.corruption_accuracy.values() for s in v])))
        ax.set_xlabel("severity (0 = clean)")
        ax.set_ylabel("top-1 accuracy")
        ax.set_title("common corruptions")
        ax.grid(alpha=0.3)
        if self.corruption_accuracy:
            ax.legend()
        ks = sorted(self.shift_consistency)
        bx.plot(ks, [self.shift_consistency[k] for k in ks], marker="o")
        bx.set_xticks(ks)
        bx.set_xlabel(f"max shift k (pixels, {self.shift_mode})")
        bx.set_ylabel("consistency")
        bx.set_ylim(min([0.9] + [self.shift_consistency[k] - 0.02 for k in ks]), 1.0)
        bx.set_title("shift consistency (Zhang 2019)")
        bx.grid(alpha=0.3)
        fig.suptitle(f"{self.model_name}: {self.n_images} images")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        return path

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Writes ``robustness.json``, ``robustness.md`` and ``robustness.png`` to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "robustness.json", "markdown": out / "robustness.md", "plot": out / "robustness.png"}
        self.to_json(paths["json"])
        paths["markdown"].write_text(self.to_markdown())
        self.plot(paths["plot"])
        return paths


def _predict(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0)).argmax(axis=-1)


def evaluate_robustness(model, images: Any, labels: Any,
                        corruptions: Sequence[str] = ("gaussian_noise", "blur", "contrast", "brightness"),
                        severities: Sequence[int] = (1, 2, 3), shifts: Sequence[int] = (1, 2, 4), *,
                        shift_mode: str = "circular", seed: int = 0, batch_size: int = 256) -> RobustnessReport:
    """Measures accuracy under corruptions and the shift consistency of a classifier.

    Args:
        model: a Keras classifier taking ``[0, 1]`` images (logits or probabilities).
        images: ``(N, H, W, C)`` uint8 0..255 or float ``[0, 1]`` images.
        labels: class indices ``(N,)`` or one-hot ``(N, K)``.
        corruptions: names from :data:`CORRUPTIONS`.
        severities: severities 1..5 to evaluate.
        shifts: maximum shifts ``k >= 1`` (pixels) for the consistency score.
        shift_mode: ``"circular"`` or ``"zero"``; see :func:`shift`.
        seed: seeds the noise and the shift offsets, so reports are reproducible.
        batch_size: prediction batch size.

    Returns:
        A :class:`RobustnessReport`.

    Example:
        >>> report = evaluate_robustness(model, x_test[:2000], y_test[:2000])  # doctest: +SKIP
        >>> report.write("runs/robustness")  # doctest: +SKIP
    """
    x = to_float_images(images)
    y = _class_indices(labels, len(x))
    for name in corruptions:
        if name not in SEVERITY_PARAMETERS:
            raise ValueError(f"`corruptions` must hold names from {CORRUPTIONS}; got {name!r}")
    for s in severities:
        if _check_severity(s) == 0:
            raise ValueError("`severities` must be in [1, 5]; severity 0 is the clean accuracy, always reported")
    for k in shifts:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"`shifts` must hold integers >= 1; got {k!r}")
    if shift_mode not in SHIFT_MODES:
        raise ValueError(f"`shift_mode` must be one of {SHIFT_MODES}; got {shift_mode!r}")

    def accuracy(images_: np.ndarray) -> float:
        return float(np.mean(_predict(model, images_, batch_size) == y))

    results = {name: {int(s): accuracy(corrupt(x, name, s, seed=seed + 1000 * i + s))
                      for s in severities} for i, name in enumerate(corruptions)}
    rng = np.random.default_rng(seed)
    consistency = {}
    for k in shifts:
        offsets = rng.integers(-k, k + 1, size=(4, len(x)))
        first = _predict(model, shift(x, offsets[0], offsets[1], shift_mode), batch_size)
        second = _predict(model, shift(x, offsets[2], offsets[3], shift_mode), batch_size)
        consistency[int(k)] = float(np.mean(first == second))
    return RobustnessReport(model_name=getattr(model, "name", "model"), n_images=len(x), clean_accuracy=accuracy(x),
                            corruption_accuracy=results, shift_consistency=consistency, shift_mode=shift_mode,
                            seed=seed)


__all__ = ["evaluate_robustness", "RobustnessReport", "corrupt", "shift", "gaussian_kernel", "to_float_images",
           "CORRUPTIONS", "SEVERITY_PARAMETERS", "SHIFT_MODES", "MAX_SEVERITY"]

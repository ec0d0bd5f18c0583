"""The shipped weights reach the accuracies their results files state.

Each shipped ``.weights.h5`` is loaded through the public API
(``recipes.mnist_1500(weights="mnist")``, ``recipes.cifar10_140k(weights="cifar10")``)
and evaluated on the FULL official test set (10,000 images, read straight from the
``.npz`` files with NumPy as ``[0, 1]`` pixels); each shipped int8 ``.tflite`` is run
with LiteRT's own interpreter, not through ``keras_effcnn.export``. The expected
figures are read from the shipped files (``<recipe>.json`` for Keras,
``<recipe>_int8.report.json`` for the ``.tflite``), never retyped here, so the test
follows a re-export and fails when a file and its figure drift apart.

Tolerances: the same weights on the same images must give the same predictions; only
the summation order of float kernels (batch size, thread count, oneDNN vs Eigen)
can differ from the run that wrote the figure, and that flips at most a few
near-tie images. ``TOLERANCE`` = 0.05 percentage points = 5 of the 10,000 images.
Accuracy alone is coarse (noise of 1e-2 on one kernel of the MNIST net moves it by
one image), so the Keras weights are also held to the results file's test *loss*,
recomputed here in float64 from the logits with the recipe's label smoothing: the
same summation-order noise moves that mean by ~1e-7 relative (measured: 4e-8 for
MNIST), so ``LOSS_RTOL`` = 1e-5 leaves a 100x margin, while that perturbation moves
it by 2e-3.

Tests never train: a missing file is a failure, not a fallback.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from keras_effcnn import recipes

WEIGHTS = Path(recipes.__file__).resolve().parent / "weights"
TOLERANCE = 0.0005  # 0.05 pp: five test images of 10,000
LOSS_RTOL = 1e-5  # float32 summation-order noise on a 10,000-image mean is ~1e-7
TEST_SIZE = 10_000

# shipped weight name -> (recipe builder, dataset file)
SHIPPED = {
    "mnist": ("mnist_1500", "mnist"),
    "cifar10": ("cifar10_140k", "cifar10"),
}


def _read_json(name: str) -> dict:
    path = WEIGHTS / name
    assert path.is_file(), f"shipped file {path} is missing"
    return json.loads(path.read_text())


def _test_set(data_dir: Path, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_dir / f"{dataset}.npz") as arrays:
        x, y = arrays["x_test"], arrays["y_test"].reshape(-1).astype(np.int64)
    if x.ndim == 3:  # MNIST is stored (N, 28, 28)
        x = x[..., None]
    assert len(x) == len(y) == TEST_SIZE, "the full official test set is expected"
    return (x.astype(np.float32) / 255.0), y


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def shipped(request, data_dir):
    weights = request.param
    recipe_name, dataset = SHIPPED[weights]
    x, y = _test_set(data_dir, dataset)
    return weights, recipe_name, dataset, x, y


def test_keras_weights_reach_the_results_file_accuracy_and_loss(shipped):
    weights, recipe_name, dataset, x, y = shipped
    results = _read_json(f"{recipe_name}.json")
    assert results["recipe"]["dataset"] == dataset
    model = getattr(recipes, recipe_name)(weights=weights)  # the public loader
    assert model.training_plan.name == recipe_name
    logits = np.asarray(model.predict(x, batch_size=1000, verbose=0))
    accuracy = float(np.mean(logits.argmax(axis=1) == y))
    stated = float(results["test"]["accuracy"])
    assert abs(accuracy - stated) <= TOLERANCE, (
        f"{recipe_name}: {accuracy:.4%} on the {TEST_SIZE:,} test images, results file states {stated:.4%}")
    loss = _cross_entropy(logits, y, float(results["recipe"]["label_smoothing"]))
    print(f"{recipe_name} Keras: accuracy {accuracy:.4f} (file {stated:.4f}), loss {loss:.8f} "
          f"(file {results['test']['loss']:.8f})")  # shown with pytest -rP
    assert loss == pytest.approx(float(results["test"]["loss"]), rel=LOSS_RTOL), (
        f"{recipe_name}: test loss {loss:.8f}, results file states {results['test']['loss']:.8f}")


def _cross_entropy(logits: np.ndarray, labels: np.ndarray, smoothing: float) -> float:
    """Mean (label-smoothed) cross-entropy from logits, in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    k = z.shape[1]
    target = (1 - smoothing) * np.eye(k)[labels] + smoothing / k
    return float(np.mean(-(target * log_p).sum(axis=1)))


def _run_litert(path: Path, images: np.ndarray, batch: int = 500) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter  # in the [test] extra: CI always has it

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], [batch, *images.shape[1:]])
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    outputs = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        if np.issubdtype(inp["dtype"], np.integer):  # int8 I/O: quantize with the file's own parameters
            info = np.iinfo(inp["dtype"])
            chunk = np.clip(np.round(chunk / in_scale + in_zero), info.min, info.max)
        interpreter.set_tensor(inp["index"], chunk.astype(inp["dtype"]))
        interpreter.invoke()
        result = interpreter.get_tensor(out["index"])[:n].astype(np.float32)
        if np.issubdtype(out["dtype"], np.integer):
            result = (result - out_zero) * out_scale
        outputs.append(result)
    return np.concatenate(outputs)


def test_int8_tflite_reaches_the_report_accuracy(shipped):
    weights, recipe_name, dataset, x, y = shipped
    report = _read_json(f"{recipe_name}_int8.report.json")
    evaluation = report["evaluation"]
    assert report["quantize"] == "int8"
    assert (evaluation["dataset"], evaluation["num_images"]) == (dataset, TEST_SIZE)
    path = WEIGHTS / f"{recipe_name}_int8.tflite"
    assert path.is_file(), f"shipped file {path} is missing"
    assert path.stat().st_size == evaluation["size_bytes"], "the report describes another file"
    accuracy = float(np.mean(_run_litert(path, x).argmax(axis=1) == y))
    stated = float(evaluation["accuracy"])
    print(f"{path.name}: accuracy {accuracy:.4f} (report {stated:.4f})")  # shown with pytest -rP
    assert abs(accuracy - stated) <= TOLERANCE, (
        f"{path.name}: {accuracy:.4%} on the {TEST_SIZE:,} test images, report states {stated:.4%}")
    # The report's Keras figure is the Keras model the file was exported from: the shipped weights.
    keras_stated = float(_read_json(f"{recipe_name}.json")["test"]["accuracy"])
    assert abs(float(evaluation["keras_accuracy"]) - keras_stated) <= TOLERANCE

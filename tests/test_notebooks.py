"""The example notebooks: committed without outputs, and each runs end to end on the real data.

They run headless with nbclient in small-steps mode (``KERAS_EFFCNN_SMALL=1``: tiny
slices, one epoch), on a ``python3`` kernel spec written for this interpreter, so the
kernel is the running virtual environment whatever ``python`` is on the PATH.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
EXPECTED = ("01_quickstart", "02_build_your_own", "03_phases_on_mnist", "04_tuning", "05_export_android",
            "06_export_micro", "07_fine_tune")
CELL_TIMEOUT_S = 300

# Files each notebook must leave in its output folder: evidence that it got to its end.
PRODUCES = {
    "01_quickstart": ["curves.png", "mnist_1500_int8.tflite", "mnist_1500_int8.report.json",
                      "mnist_1500_int8.labels.txt"],
    "02_build_your_own": ["small_cifar_net.keras", "small_cifar_net_float16.tflite"],
    "03_phases_on_mnist": [],
    "04_tuning": ["tuning/mnist_1500-random/best_recipe.json"],
    "05_export_android": ["mnist_float32.tflite", "mnist_int8.tflite", "mnist_int8_uint8_io.tflite"],
    "06_export_micro": ["mnist_int8.tflite", "mnist_int8_mcu.tflite", "firmware/mnist_model.cc",
                        "firmware/mnist_model.h"],
    "07_fine_tune": ["cat_dog.keras"],
}


def test_every_example_notebook_is_there():
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs; strip them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    # The small-steps switch is what keeps the test suite fast.
    assert any("KERAS_EFFCNN_SMALL" in cell.source for cell in nb.cells if cell.cell_type == "code")


@pytest.fixture(scope="module")
def python3_kernel(tmp_path_factory):
    """A ``python3`` kernel spec that launches this interpreter, first on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)",
        "language": "python",
    }))
    return root


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, data_dir, python3_kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(python3_kernel))
    monkeypatch.setenv("KERAS_EFFCNN_SMALL", "1")
    monkeypatch.setenv("KERAS_EFFCNN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("KERAS_EFFCNN_OUT", str(tmp_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails

    out = tmp_path / path.stem
    missing = [name for name in PRODUCES[path.stem] if not (out / name).is_file()]
    assert not missing, f"{path.name} did not write {missing} into {out}"
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "SMALL=True" in printed, "the notebook ignored KERAS_EFFCNN_SMALL"
    assert f"DATA_DIR={data_dir}" in printed, "the notebook ignored KERAS_EFFCNN_DATA_DIR"

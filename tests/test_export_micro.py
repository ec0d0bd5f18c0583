"""TensorFlow Lite Micro: the export check, the arena, the C array, and the shipped int8 files.

Files are run under TFLM with its own Python interpreter (PyPI ``tflite-micro``)
and under LiteRT by hand loops written here, so the module's numbers are
checked against an independent reference. Deliberately broken models (an op
TFLM lacks, and the dynamic-batch dilated convolution TFLM computed wrongly in
the first shipped CIFAR-10 file) must make the export fail and name the layer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_effcnn
from keras_effcnn import export
from keras_effcnn.export import micro

WEIGHTS = Path(keras_effcnn.__file__).parent / "weights"


def _tflm_by_hand(path, images):
    """TFLM's Python interpreter, one float image per invoke (float-I/O files)."""
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_file(str(path))
    outputs = []
    for image in images:
        interpreter.set_input((image[None] / 255.0).astype(np.float32), 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0)[0]))
    return np.array(outputs)


def _litert_by_hand(path, images, reference=False):
    """LiteRT through its signature runner (the API an app's `runSignature` uses), one image at a time;
    ``reference``: on LiteRT's reference kernels (the ones TFLM ports) instead of XNNPACK."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    runner = Interpreter(model_path=str(path), num_threads=1,
                         experimental_op_resolver_type=resolver).get_signature_runner()
    name = next(iter(runner.get_input_details()))
    return np.concatenate([next(iter(runner(**{name: (image[None] / 255.0).astype(np.float32)}).values()))
                           for image in images])


@pytest.fixture(scope="module")
def mnist(data_dir):
    with np.load(data_dir / "mnist.npz") as f:
        return f["x_train"][:400, ..., None], f["y_train"][:400]


def _small_model(middle: keras.layers.Layer, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    x = middle(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def _resize(images):
    return np.asarray(keras.ops.image.resize(images.astype("float32"), (16, 16))).round().astype(np.uint8)


@pytest.fixture(scope="module")
def small_images(mnist):
    return _resize(mnist[0])


@pytest.fixture(scope="module")
def dilated_file(small_images, tmp_path_factory):
    model = _small_model(keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, name="dilated"))
    path = tmp_path_factory.mktemp("micro") / "dilated.tflite"
    return model, export.to_tflite(model, path, quantize="int8", representative_data=small_images,
                                   num_calibration=100, num_check=100, labels=list("abcd"))


def test_dynamic_batch_dilated_conv_is_caught_and_named(dilated_file, small_images, tmp_path):
    """With a dynamic batch the converter keeps SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND with
    placeholder batch-1 shapes, and TFLM (which never resizes) computes a quarter of the output."""
    # Other weights than the static-batch file's: TFLM leaves 3/4 of the map unwritten, and its arena
    # may reuse memory that still holds that file's (correct) activations of the same images, which
    # made the wrong outputs agree by chance in some runs. (The fixture still runs first, as in use.)
    model = _small_model(keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, name="dilated"), seed=1)
    with pytest.raises(export.ExportError, match=r"wrong under TensorFlow Lite Micro in layer\(s\) dilated") as info:
        export.to_tflite(model, tmp_path / "dynamic.tflite", quantize="int8", representative_data=small_images,
                         num_calibration=100, num_check=100, batch_size=None)
    assert info.value.layers == ["dilated (DepthwiseConv2D)"]
    assert set(info.value.ops) <= {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND"} and info.value.ops


def test_static_batch_folds_the_dilation_and_passes(dilated_file, small_images):
    _, report = dilated_file
    assert "SPACE_TO_BATCH_ND" not in report.ops and "DEPTHWISE_CONV_2D" in report.ops
    assert report.micro["ok"] and report.micro["num_images"] == 100
    assert report.micro["agreement"] >= micro.MIN_AGREEMENT
    assert report.input.shape == [1, 16, 16, 1]


def test_op_tflm_lacks_names_the_layer(small_images, tmp_path):
    model = _small_model(keras.layers.Activation(lambda x: keras.activations.gelu(x, approximate=False),
                                                 name="gelu_act"))
    with pytest.raises(export.ExportError, match=r"gelu_act .*GELU") as info:
        export.to_tflite(model, tmp_path / "gelu.tflite", quantize="int8", representative_data=small_images,
                         num_calibration=50, num_check=20)
    assert info.value.ops == ["GELU"] and info.value.layers == ["gelu_act (Activation)"]
    # The same file is fine for LiteRT: the check can be turned off.
    report = export.to_tflite(model, tmp_path / "gelu.tflite", quantize="int8", representative_data=small_images,
                              num_calibration=50, micro_check=False, report=False)
    assert "GELU" in report.ops and report.micro is None


def test_without_tflite_micro_the_check_is_skipped_loudly(small_images, tmp_path, monkeypatch):
    monkeypatch.setattr(micro, "available", lambda: False)
    model = _small_model(keras.layers.Identity(name="same"))
    with pytest.warns(UserWarning, match="not checked under TensorFlow Lite Micro"):
        report = export.to_tflite(model, tmp_path / "m.tflite", quantize="int8", representative_data=small_images,
                                  num_calibration=50, num_check=10)
    assert report.micro["ok"] is None and "not checked" in report.to_markdown()


def test_check_matches_hand_loops_over_both_runtimes(dilated_file, small_images, mnist):
    _, report = dilated_file
    images, labels = small_images[200:300], mnist[1][200:300]
    check = micro.check_micro(report.path, images, labels)
    tflm, litert = _tflm_by_hand(report.path, images), _litert_by_hand(report.path, images)
    reference = _litert_by_hand(report.path, images, reference=True)
    np.testing.assert_allclose(micro.run_micro(report.path, images), tflm, atol=1e-6)
    assert check["kernels"] == "reference"
    assert check["agreement"] == pytest.approx(np.mean(tflm.argmax(1) == reference.argmax(1)))
    assert check["max_abs_diff"] == pytest.approx(np.max(np.abs(tflm - reference)), abs=1e-6)
    assert check["agreement_xnnpack"] == pytest.approx(np.mean(tflm.argmax(1) == litert.argmax(1)))
    assert check["accuracy_tflm"] == pytest.approx(np.mean(tflm.argmax(1) == labels))
    assert check["accuracy_litert"] == pytest.approx(np.mean(litert.argmax(1) == labels))


def test_arena_is_enough_and_not_padded(dilated_file):
    _, report = dilated_file
    arena = micro.arena_bytes(report.path)
    assert arena == report.micro["arena_bytes"] and arena % 16 == 0
    image = np.zeros((1, 16, 16, 1), np.float32)
    interpreter = micro.micro_interpreter(report.path, arena_size=arena)
    interpreter.set_input(image, 0)
    interpreter.invoke()
    with pytest.raises(RuntimeError):
        micro.micro_interpreter(report.path, arena_size=arena // 2)


def test_resolver_names():
    assert micro.resolver_name("CONV_2D") == "AddConv2D"
    assert micro.resolver_name("DEPTHWISE_CONV_2D") == "AddDepthwiseConv2D"
    assert micro.resolver_name("SPACE_TO_BATCH_ND") == "AddSpaceToBatchNd"
    assert micro.resolver_name("FULLY_CONNECTED") == "AddFullyConnected"
    assert micro.resolver_name("CUMSUM") == "AddCumSum"


def test_c_array_round_trips_and_compiles(dilated_file, tmp_path):
    _, report = dilated_file
    cc, h = micro.write_c_array(report.path, tmp_path, name="dilated_model", arena_size=4096)
    data = Path(report.path).read_bytes()
    assert micro.read_c_array(cc) == data
    source, header = cc.read_text(), h.read_text()
    assert "alignas(16) const unsigned char g_dilated_model_model[]" in source
    assert "constexpr size_t kDilatedModelTensorArenaSize = 4096;" in header
    registered = [line.split(".")[1].split("(")[0] for line in header.splitlines() if "op_resolver.Add" in line]
    assert registered == [micro.resolver_name(op) for op in report.ops]
    assert f"MicroMutableOpResolver<{len(report.ops)}>" in header
    if shutil.which("g++") is None:
        return  # the byte round trip above still holds; compiling needs a C++ compiler
    main = tmp_path / "main.cc"
    main.write_text(
        '#include <cstdint>\n#include <cstring>\n#include "dilated_model.h"\n'
        "int main() {\n"
        "  if (reinterpret_cast<std::uintptr_t>(g_dilated_model_model) % 16 != 0) return 1;\n"
        f"  if (g_dilated_model_model_len != {len(data)}u) return 2;\n"
        '  if (std::memcmp(g_dilated_model_model + 4, "TFL3", 4) != 0) return 3;\n'
        "  return 0;\n}\n"
    )
    binary = tmp_path / "check"
    subprocess.run(["g++", "-std=c++17", "-I", str(tmp_path), str(cc), str(main), "-o", str(binary)],
                   check=True, capture_output=True)
    assert subprocess.run([str(binary)]).returncode == 0


def test_softmax_option_outputs_probabilities(small_images, tmp_path):
    model = _small_model(keras.layers.Identity(name="same"))
    images = small_images[:20]
    report = export.to_tflite(model, tmp_path / "probs.tflite", softmax=True, report=False)
    logits = model.predict(images / 255.0, verbose=0)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert report.softmax and "SOFTMAX" in report.ops
    np.testing.assert_allclose(export.run_tflite(report.path, images), expected, atol=1e-5)
    plain = export.to_tflite(model, tmp_path / "logits.tflite", report=False)
    np.testing.assert_allclose(export.run_tflite(plain.path, images), logits, atol=1e-4)


def test_cli_target_micro_writes_int8_c_array(dilated_file, data_dir, tmp_path):
    from keras_effcnn.cli import main

    mnist_model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                                    keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    model_path = tmp_path / "m.keras"
    mnist_model.save(model_path)
    out = tmp_path / "fw" / "m_int8.tflite"
    code = main(["export", str(model_path), "--target", "micro", "--out", str(out), "--no-eval",
                 "--num-calibration", "50", "--data-dir", str(data_dir)])
    assert code == 0
    report = json.loads(out.with_name("m_int8.report.json").read_text())
    assert report["int8_io"] == "int8" and report["input"]["dtype"] == "int8"
    header = out.with_name("m_int8.h").read_text()
    assert f"kMInt8TensorArenaSize = {report['micro']['arena_bytes']};" in header
    assert micro.read_c_array(out.with_name("m_int8.cc")) == out.read_bytes()


# ---------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("name, dataset, count", [("mnist_1500", "mnist", 2_000), ("cifar10_140k", "cifar10", 1_000)])
def test_shipped_int8_file_is_right_under_tflm(name, dataset, count, data_dir):
    """TFLM runs one image per invoke (~25 ms per CIFAR-10 image here), so the full 10,000-image
    figures are in the files' reports, measured by `keras-effcnn export ... --micro-eval` (and
    checked below); here the first 1,000 / 2,000 test images, none used for calibration.

    TFLM ports LiteRT's reference kernels: their top-1 answers must match (measured: on every
    one of these images, outputs within one quantization step). XNNPACK, what phones run,
    rounds differently and flips ~1 % of CIFAR-10 near-ties, so against it only the accuracy
    is compared."""
    path = WEIGHTS / f"{name}_int8.tflite"
    with np.load(data_dir / f"{dataset}.npz") as f:
        images, labels = f["x_test"][:count], f["y_test"][:count].reshape(-1)
    if images.ndim == 3:
        images = images[..., None]
    tflm, litert = micro.run_micro(path, images), export.run_tflite(path, images)
    reference = export.run_tflite(path, images, kernels="reference")
    assert np.mean(tflm.argmax(1) == reference.argmax(1)) >= 0.999
    # Over the same images TFLM is as accurate as LiteRT within 0.5 pp (measured on 10K: see the report).
    assert np.mean(tflm.argmax(1) == labels) >= np.mean(litert.argmax(1) == labels) - 0.005
    report = json.loads(path.with_name(f"{name}_int8.report.json").read_text())
    # The export's own check (held-out images) compared TFLM with the same reference kernels.
    assert report["micro"]["kernels"] == "reference" and report["micro"]["agreement"] >= micro.MIN_AGREEMENT
    evaluation = report["evaluation"]
    assert evaluation["num_images"] == 10_000 and evaluation["agreement_tflm"] >= 0.99
    # The int8 goal (issue #13): at most 0.3 pp below Keras on LiteRT (the phone path) ...
    assert evaluation["accuracy_drop_pp"] <= 0.3
    # ... and under TFLM (the reference kernels, which round differently from XNNPACK) the 100-epoch
    # cifar10_140k file loses 0.37 pp: above the goal, recorded in keras_effcnn/weights/README.md;
    # this bound keeps it from getting worse.
    assert evaluation["keras_accuracy"] - evaluation["accuracy_tflm"] <= 0.004

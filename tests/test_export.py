"""TFLite export: every quantization mode of a model built from every custom layer.

A tiny model is trained for a few hundred steps on a real MNIST slice so that
its predictions mean something; the exported files are then compared with the
Keras model on 500 real test images.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_effcnn import export
from keras_effcnn.export import convert, diagnose, flatbuffer
from keras_effcnn.layers import BlurPool2D, ConvBNAct, DepthwiseSeparableBlock, SqueezeExcite

SOFTMAX_STEP = 1 / 256  # TFLite's fixed int8 quantization of softmax outputs
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MODES = {  # name -> (quantize, int8_io)
    "float32": (None, None),
    "float16": ("float16", None),
    "dynamic": ("dynamic", None),
    "int8": ("int8", None),
    "int8_io_int8": ("int8", "int8"),
    "int8_io_uint8": ("int8", "uint8"),
}


def _tiny_model() -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Normalization(mean=0.1307, variance=0.3081**2)(inputs)
    x = ConvBNAct(8, 3, name="stem")(x)
    x = BlurPool2D(filter_size=3, strides=2, padding="reflect", name="blur")(x)  # 14x14
    x = DepthwiseSeparableBlock(32, se_ratio=0.25, se_gate="hard_sigmoid", name="ds1")(x)
    # 32x48 pointwise kernel = 1536 weights, above dynamic-range quantization's 1024 threshold.
    x = DepthwiseSeparableBlock(48, strides=2, name="ds2")(x)  # 7x7
    # Not before a depthwise convolution: SE gates leave some channels tiny, and one
    # per-tensor int8 scale for all of them loses those channels (then BN amplifies it).
    x = SqueezeExcite(ratio=0.25, gate="sigmoid", name="se")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture(scope="module")
def mnist(data_dir):
    with np.load(data_dir / "mnist.npz") as f:
        return f["x_train"][:12800, ..., None], f["y_train"][:12800], f["x_test"][:500, ..., None], f["y_test"][:500]


@pytest.fixture(scope="module")
def trained(mnist):
    x_train, y_train, _, _ = mnist
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    # 200 steps; the decay to zero lets the BatchNorm moving statistics catch up with
    # the weights, so inference-mode predictions are as good as training-mode ones.
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=len(x_train) // 64)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", jit_compile=False)
    model.fit(x_train / 255.0, y_train, batch_size=64, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def saved_model(trained, tmp_path_factory):
    # Traced once and converted many ways: tracing costs as much as converting.
    return export.export_saved_model(trained, tmp_path_factory.mktemp("saved") / "tiny")


@pytest.fixture(scope="module")
def exported(trained, saved_model, mnist, tmp_path_factory):
    x_train = mnist[0]
    folder = tmp_path_factory.mktemp("tflite")
    return {
        name: export.to_tflite(trained, folder / f"tiny_{name}.tflite", quantize=q, int8_io=io,
                               representative_data=x_train if q == "int8" else None, labels=LABELS,
                               saved_model_dir=saved_model)
        for name, (q, io) in MODES.items()
    }


@pytest.fixture(scope="module")
def keras_probs(trained, mnist):
    return trained.predict(mnist[2] / 255.0, verbose=0)


def test_the_tiny_model_learned(keras_probs, mnist):
    # Otherwise the agreement checks below would compare noise.
    assert np.mean(keras_probs.argmax(1) == mnist[3]) > 0.8


def test_float32_matches_keras(exported, keras_probs, mnist):
    # 500 is no multiple of 96: the last batch goes through the zero-padding path.
    probs = export.run_tflite(exported["float32"].path, mnist[2], batch_size=96)
    assert probs.dtype == np.float32 and probs.shape == (500, 10)
    np.testing.assert_allclose(probs, keras_probs, atol=1e-5)


@pytest.mark.parametrize("mode, atol, min_agreement", [("float16", 0.02, 0.99), ("dynamic", 0.05, 0.97)])
def test_float16_and_dynamic_are_close_to_keras(exported, keras_probs, mnist, mode, atol, min_agreement):
    probs = export.run_tflite(exported[mode].path, mnist[2])
    assert np.max(np.abs(probs - keras_probs)) < atol
    assert np.mean(probs.argmax(1) == keras_probs.argmax(1)) >= min_agreement


@pytest.mark.parametrize("mode", ["int8", "int8_io_int8", "int8_io_uint8"])
def test_int8_top1_agrees_with_keras_on_real_images(exported, keras_probs, mnist, mode):
    probs = export.run_tflite(exported[mode].path, mnist[2])
    assert np.mean(probs.argmax(1) == keras_probs.argmax(1)) >= 0.95
    # The int8 softmax output has scale 1/256: every probability is a whole number of steps.
    np.testing.assert_allclose(probs * 256, np.round(probs * 256), atol=1e-3)
    # Rounding every activation to int8 moves a probability by about one step of 1/256 on
    # average (measured 1.1); a near-tie image moves more (measured at most 21 steps).
    diff = np.abs(probs - keras_probs)
    assert diff.mean() < 2 * SOFTMAX_STEP
    assert diff.max() < 32 * SOFTMAX_STEP
    # Each of the 10 outputs rounds by at most half a step: the sum is 1 within 5 steps.
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=5 * SOFTMAX_STEP)


def test_dynamic_quantizes_large_weights_only(exported):
    from ai_edge_litert.interpreter import Interpreter

    def weight_dtypes(report):
        interpreter = Interpreter(model_path=report.path)
        return {tuple(t["shape"]): np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}

    # ds2's 48x32 pointwise kernel (1536 weights) passes the 1024-element threshold...
    assert weight_dtypes(exported["dynamic"])[(48, 1, 1, 32)] == "int8"
    assert weight_dtypes(exported["float32"])[(48, 1, 1, 32)] == "float32"
    # ...the 32x8 one of ds1 (256 weights) does not.
    assert weight_dtypes(exported["dynamic"])[(32, 1, 1, 8)] == "float32"
    # 1536 * (4 - 1) bytes saved, less 48 per-channel scales (float32) and zero points (int64).
    saved = exported["float32"].size_bytes - exported["dynamic"].size_bytes
    assert abs(saved - (1536 * 3 - 48 * 12)) <= 64
    assert exported["float16"].size_bytes < exported["float32"].size_bytes


def test_int8_is_full_integer(exported):
    """Between the boundary QUANTIZE/DEQUANTIZE ops every tensor is integer."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=exported["int8"].path)
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        used = [dtypes[i] for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        assert all(np.issubdtype(d, np.integer) for d in used), (op["op_name"], used)


@pytest.mark.parametrize("mode, dtype, zero_point", [("int8_io_int8", "int8", -128), ("int8_io_uint8", "uint8", 0)])
def test_integer_io_quantization_parameters(exported, mode, dtype, zero_point):
    report = exported[mode]
    assert report.input.dtype == dtype and report.output.dtype == dtype
    # Calibration images span exactly [0, 1] (MNIST has 0 and 255 pixels): scale 1/255.
    assert report.input.scale == pytest.approx(1 / 255, rel=1e-3)
    assert report.input.zero_point == zero_point
    assert exported["int8"].input.dtype == "float32" and exported["int8"].input.scale == 0.0
    assert report.num_calibration == 200


def test_uint8_io_takes_raw_pixels_exactly(exported, mnist):
    # With scale 1/255 and zero-point 0, quantizing [0, 1] images gives back the raw pixels.
    info = exported["int8_io_uint8"].input
    np.testing.assert_array_equal(export.quantize_input(mnist[2] / 255.0, info), mnist[2])


def test_quantize_and_dequantize_closed_form():
    info = export.TensorInfo("x", [1, 3], "int8", scale=0.5, zero_point=-10)
    q = export.quantize_input(np.array([[0.0, 1.26, 1000.0]], np.float32), info)
    np.testing.assert_array_equal(q, np.array([[-10, -7, 127]], np.int8))  # 1.26/0.5=2.52->3; saturates
    np.testing.assert_allclose(export.dequantize_output(q, info), [[0.0, 1.5, 68.5]])
    floats = export.TensorInfo("y", [1, 3], "float32")
    assert export.quantize_input(np.ones((1, 3)), floats).dtype == np.float32


def test_ops_are_builtin_and_match_the_interpreter(exported):
    from ai_edge_litert.interpreter import Interpreter

    for name, report in exported.items():
        interpreter = Interpreter(model_path=report.path)
        seen = sorted({op["op_name"] for op in interpreter._get_ops_details()})
        assert report.ops == seen, name
        assert not any(op.startswith(("CUSTOM", "FLEX", "DELEGATE")) for op in report.ops), name
        # BlurPool's reflect padding and the depthwise convolutions.
        assert {"DEPTHWISE_CONV_2D", "MIRROR_PAD", "CONV_2D", "FULLY_CONNECTED"} <= set(report.ops), name
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(exported["int8"].ops)
    assert "DEQUANTIZE" not in exported["int8_io_int8"].ops


def test_inner_tensor_names_are_dropped_unless_kept(trained, saved_model, exported, mnist, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    kept = export.to_tflite(trained, tmp_path / "named.tflite", keep_tensor_names=True, report=False,
                            saved_model_dir=saved_model)
    stripped = exported["float32"]
    np.testing.assert_array_equal(export.run_tflite(kept.path, mnist[2][:50]),
                                  export.run_tflite(stripped.path, mnist[2][:50]))
    assert kept.size_bytes > stripped.size_bytes
    interpreter = Interpreter(model_path=stripped.path)
    boundary = {d["index"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    assert all(names[i] for i in boundary)
    assert not any(name for i, name in names.items() if i not in boundary)
    assert stripped.input.name == kept.input.name and interpreter.get_signature_list()


def test_labels_travel_with_the_file(exported):
    report = exported["int8"]
    labels_path = export.labels_file(report.path)
    assert report.labels_path == str(labels_path)
    assert labels_path.name == "tiny_int8.labels.txt"
    assert labels_path.read_text().splitlines() == LABELS
    assert export.read_labels(report.path) == LABELS
    assert export.embedded_metadata(report.path)[export.LABELS_METADATA_NAME].decode().splitlines() == LABELS
    labels_path.unlink()  # the embedded copy still answers
    assert export.read_labels(report.path) == LABELS


def test_report_fields_and_files(exported):
    report = exported["int8_io_uint8"]
    from pathlib import Path

    path = Path(report.path)
    assert report.size_bytes == path.stat().st_size
    # A static batch of 1: what TFLM needs (it never resizes) and what a phone runs.
    assert report.input.shape == [1, 28, 28, 1] and report.output.shape == [1, 10]
    saved = json.loads(path.with_name("tiny_int8_io_uint8.report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["quantize"] == "int8" and saved["int8_io"] == "uint8"
    assert saved["size_kb"] == pytest.approx(report.size_bytes / 1000, abs=1e-3)
    markdown = path.with_name("tiny_int8_io_uint8.report.md").read_text()
    assert "DEPTHWISE_CONV_2D" in markdown and f"{report.size_bytes} bytes" in markdown


def _litert_by_hand(path, images):
    """LiteRT's default interpreter (XNNPACK, as on Android), one image per invoke, float I/O."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for image in images:
        interpreter.set_tensor(inp["index"], (image[None] / 255.0).astype(np.float32))
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0])
    return np.array(results)


def test_evaluate_tflite(exported, trained, keras_probs, mnist):
    path = exported["int8"].path
    result = export.evaluate_tflite(path, mnist[2], mnist[3], keras_model=trained, latency_runs=20)
    # References computed without the module: a hand loop over LiteRT and Keras' own outputs.
    by_hand = _litert_by_hand(path, mnist[2])
    assert result["num_images"] == 500
    assert result["accuracy"] == pytest.approx(np.mean(by_hand.argmax(1) == mnist[3]))
    assert result["keras_accuracy"] == pytest.approx(np.mean(keras_probs.argmax(1) == mnist[3]))
    assert result["accuracy_drop_pp"] == pytest.approx(100 * (result["keras_accuracy"] - result["accuracy"]))
    assert result["agreement"] == pytest.approx(np.mean(by_hand.argmax(1) == keras_probs.argmax(1)))
    assert result["max_abs_diff"] == pytest.approx(np.max(np.abs(by_hand - keras_probs)), abs=1e-6)
    assert np.isfinite(result["latency_ms"]) and result["latency_ms"] > 0
    assert result["size_bytes"] == exported["int8"].size_bytes
    assert export.input_shape(path) == (1, 28, 28, 1)
    # One-hot labels and float images give the same accuracy.
    same = export.evaluate_tflite(path, mnist[2] / 255.0, np.eye(10)[mnist[3]], latency_runs=1)
    assert same["accuracy"] == result["accuracy"] and "agreement" not in same


def test_representative_data_forms_agree(mnist):
    """An array, a batched tf.data of (image, label) pairs and a list of floats give the same images."""
    images = mnist[0][:64]
    shape = (None, 28, 28, 1)
    from_array = convert._calibration_images(images, 64, shape)
    from_dataset = convert._calibration_images(
        tf.data.Dataset.from_tensor_slices((images, mnist[1][:64])).batch(10), 64, shape)
    from_list = convert._calibration_images([image[..., 0] / 255.0 for image in images], 64, shape)
    np.testing.assert_array_equal(from_array, images.astype(np.float32) / 255.0)
    np.testing.assert_allclose(from_dataset, from_array, atol=1e-7)
    np.testing.assert_allclose(from_list, from_array, atol=1e-7)
    # From an array a seeded random subset, from an iterable the first images.
    subset = convert._calibration_images(mnist[0], 50, shape)
    assert subset.shape == (50, 28, 28, 1)
    assert not np.array_equal(subset, mnist[0][:50] / 255.0)
    np.testing.assert_array_equal(subset, convert._calibration_images(mnist[0], 50, shape))
    assert len(convert._calibration_images(iter(images), 20, shape)) == 20


def test_bad_arguments(trained, mnist, tmp_path):
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match="quantize"):
        export.to_tflite(trained, path, quantize="int4")
    with pytest.raises(ValueError, match="int8_io"):
        export.to_tflite(trained, path, quantize="float16", int8_io="int8")
    with pytest.raises(ValueError, match="representative_data"):
        export.to_tflite(trained, path, quantize="int8")
    with pytest.raises(ValueError, match="raw 0..255"):
        export.to_tflite(trained, path, quantize="int8", representative_data=mnist[0][:10].astype("float32"))
    with pytest.raises(ValueError, match="labels"):
        export.to_tflite(trained, path, labels=LABELS[:9])
    with pytest.raises(ValueError, match="num_calibration"):
        export.to_tflite(trained, path, quantize="int8", representative_data=mnist[0], num_calibration=0)
    assert not path.exists()


def _reference_outputs(path, images):
    """Outputs of LiteRT's built-in kernels (no XNNPACK), image by image."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None].astype(np.float32))
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0])
    return np.array(results)


def test_mixed_float16_model_exports_as_float32(tmp_path):
    """float16 convolutions are no TFLite builtins: the exporter converts a float32 clone."""
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((16, 16, 1))
        x = ConvBNAct(8, 3, name="stem")(inputs)
        x = BlurPool2D(name="blur")(x)
        x = DepthwiseSeparableBlock(16, se_ratio=0.25, se_gate="hard_sigmoid", name="ds")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", dtype="float32")(x))
    finally:
        keras.config.set_dtype_policy("float32")
    clone = export.float32_model(model)
    assert {layer.dtype_policy.compute_dtype for layer in clone._flatten_layers()} == {"float32"}
    assert model.get_layer("ds").compute_dtype == "float16"  # the original is left alone
    images = np.random.default_rng(0).random((20, 16, 16, 1), dtype=np.float32)
    report = export.to_tflite(model, tmp_path / "mixed.tflite", report=False)
    probs = export.run_tflite(report.path, images)
    np.testing.assert_allclose(probs, clone.predict(images, verbose=0), atol=1e-5)
    np.testing.assert_allclose(probs, model.predict(images, verbose=0), atol=5e-3)  # float16 rounding


def test_dead_relu_scale_is_widened_so_xnnpack_loads_the_file(tmp_path, monkeypatch):
    """An SE bottleneck that is dead on every calibration image gets a ~0 int8 scale,
    which XNNPACK rejects; the widened scale loads and computes exactly the same."""
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    se = SqueezeExcite(latent_channels=2, name="se")
    x = keras.layers.GlobalAveragePooling2D()(se(x))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))
    # Pre-activations near -100 on every image: the bottleneck ReLU is dead.
    se.reduce.bias.assign(np.full(se.reduce.bias.shape, -100.0, "float32"))
    images = np.random.default_rng(0).random((40, 12, 12, 3), dtype=np.float32)

    fixed = export.to_tflite(model, tmp_path / "fixed.tflite", quantize="int8", representative_data=images,
                             report=False)
    assert fixed.xnnpack
    assert len(fixed.widened_tensors) == 1 and "se" in fixed.widened_tensors[0]

    monkeypatch.setattr(flatbuffer, "_widen_degenerate_scales", lambda model: [])
    with pytest.warns(UserWarning, match="XNNPACK"):
        raw = export.to_tflite(model, tmp_path / "raw.tflite", quantize="int8", representative_data=images,
                               report=False)
    assert not raw.xnnpack
    # The dead tensor only ever holds its zero point, so nothing changes numerically.
    np.testing.assert_array_equal(_reference_outputs(fixed.path, images), _reference_outputs(raw.path, images))
    with pytest.warns(UserWarning, match="built-in kernels"):  # run_tflite still runs the raw file
        np.testing.assert_allclose(export.run_tflite(raw.path, images), _reference_outputs(raw.path, images),
                                   atol=SOFTMAX_STEP)  # batched kernels may round differently
    # Chosen explicitly, one image per invoke: the same kernels, so the same numbers.
    np.testing.assert_array_equal(export.run_tflite(raw.path, images, batch_size=1, kernels="builtin"),
                                  _reference_outputs(raw.path, images))
    with pytest.raises(ValueError, match="kernels"):
        export.run_tflite(raw.path, images, kernels="gpu")
    # XNNPACK rounds differently from the reference kernels: within two output steps.
    np.testing.assert_allclose(export.run_tflite(fixed.path, images), _reference_outputs(fixed.path, images),
                               atol=2 * SOFTMAX_STEP)


# ------------------------------------------------------------------ unsupported ops


@keras.saving.register_keras_serializable(package="keras_effcnn_tests")
class SpectralMagnitude(keras.layers.Layer):
    """|FFT2D| per channel: tf.signal.fft2d has no TFLite builtin."""

    def call(self, x):
        x = tf.transpose(x, [0, 3, 1, 2])
        return tf.transpose(tf.abs(tf.signal.fft2d(tf.cast(x, tf.complex64))), [0, 2, 3, 1])

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="keras_effcnn_tests")
class SpectralBlock(keras.layers.Layer):
    """A composite layer hiding the unsupported op one level down."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pointwise = keras.layers.Conv2D(4, 1, name="pointwise")
        self.spectrum = SpectralMagnitude(name="spectrum")

    def call(self, x):
        return self.spectrum(self.pointwise(x))


def _model_with(layer) -> keras.Model:
    inputs = keras.Input((16, 16, 1))
    x = ConvBNAct(4, 3, name="stem")(inputs)
    x = layer(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x))


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_unsupported_op_names_the_layer(tmp_path, quantize):
    model = _model_with(SpectralMagnitude(name="spectral_pool"))
    rep = np.random.default_rng(0).random((8, 16, 16, 1), dtype=np.float32)
    with pytest.raises(export.ExportError, match=r"spectral_pool \(SpectralMagnitude\)") as info:
        export.to_tflite(model, tmp_path / "bad.tflite", quantize=quantize, representative_data=rep)
    assert info.value.layers == ["spectral_pool"]
    assert info.value.ops == ["FFT2D"]
    assert "FFT2D" in str(info.value)
    assert not (tmp_path / "bad.tflite").exists()


def test_unsupported_op_in_a_sublayer_names_the_path(tmp_path):
    with pytest.raises(export.ExportError, match=r"block/spectrum \(SpectralMagnitude\)") as info:
        export.to_tflite(_model_with(SpectralBlock(name="block")), tmp_path / "bad.tflite")
    assert info.value.layers == ["block/spectrum"]


def test_layer_probe_finds_the_layer_without_locations(tmp_path, monkeypatch):
    # If the converter's message carries no usable scope, each layer is converted alone.
    monkeypatch.setattr(diagnose, "_layers_from_scope", lambda model, scope: [])
    with pytest.raises(export.ExportError, match="converting each layer alone") as info:
        export.to_tflite(_model_with(SpectralMagnitude(name="odd_one")), tmp_path / "bad.tflite")
    assert info.value.layers == ["odd_one"]


# ---------------------------------------------------------------------------- CLI


def test_cli_export_writes_file_labels_and_evaluated_report(trained, data_dir, tmp_path):
    from keras_effcnn import data
    from keras_effcnn.cli import main

    model_path = tmp_path / "tiny.keras"
    trained.save(model_path)
    out = tmp_path / "out" / "tiny_int8.tflite"
    code = main(["export", str(model_path), "--quantize", "int8", "--out", str(out),
                 "--data-dir", str(data_dir), "--eval-images", "300", "--latency-runs", "10"])
    assert code == 0
    report = json.loads(out.with_name("tiny_int8.report.json").read_text())
    assert report["quantize"] == "int8" and report["size_bytes"] == out.stat().st_size
    assert export.read_labels(out) == list(data.DATASETS["mnist"].label_names)
    evaluation = report["evaluation"]
    assert evaluation["dataset"] == "mnist" and evaluation["num_images"] == 300
    (_, _), (x_test, y_test) = data.load_arrays("mnist", data_dir)
    probs = export.run_tflite(out, x_test[:300])
    assert evaluation["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y_test[:300].reshape(-1)))
    assert evaluation["agreement"] >= 0.95
    assert "accuracy_drop_pp" in out.with_name("tiny_int8.report.md").read_text()

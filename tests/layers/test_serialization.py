"""Every layer: config round trip, `.keras` round trip, a fit step, mixed_float16, TFLite builtins."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_effcnn.layers import (
    BlurPool2D,
    ConvBNAct,
    DepthwiseSeparableBlock,
    SqueezeExcite,
    blur_max_pool,
)

INPUT_SHAPE = (10, 10, 8)

LAYERS = {
    "blurpool_reflect": lambda: BlurPool2D(3, 2, "reflect"),
    "blurpool_zero": lambda: BlurPool2D(4, 1, "zero"),
    "squeeze_excite": lambda: SqueezeExcite(latent_channels=3, gate="hard_sigmoid", activation="swish"),
    "conv_bn_act": lambda: ConvBNAct(
        8, 3, groups=2, order="act_bn", bn_scale=False, dropout=0.2, kernel_regularizer=keras.regularizers.L2(1e-4)
    ),
    "depthwise_separable": lambda: DepthwiseSeparableBlock(
        8, 5, order="act_bn", se_ratio=0.25, se_gate="hard_sigmoid", residual=True, dropout=0.1
    ),
    "blur_max_pool": lambda: blur_max_pool(filter_size=5),
}
CUSTOM = [name for name in LAYERS if name != "blur_max_pool"]


def _randomize(model: keras.Model, seed: int = 0) -> None:
    """Random weights everywhere, BatchNorm moving variance kept positive."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.uniform(0.5, 2.0, variable.shape) if "variance" in variable.path else (
            0.3 * rng.standard_normal(variable.shape)
        )
        variable.assign(values.astype("float32"))


def _wrap(layer: keras.layers.Layer) -> keras.Model:
    inputs = keras.Input(INPUT_SHAPE)
    return keras.Model(inputs, layer(inputs))


def _images(count: int = 4, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (count,) + INPUT_SHAPE).astype("float32")


@pytest.mark.parametrize("name", CUSTOM)
def test_config_round_trip(name):
    layer = LAYERS[name]()
    config = layer.get_config()
    json.dumps(config)
    assert type(layer).from_config(config).get_config() == config

    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"keras_effcnn>{type(layer).__name__}"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(restored) is type(layer)
    assert restored.get_config() == config


@pytest.mark.parametrize("name", list(LAYERS))
def test_keras_file_round_trip_gives_identical_outputs(name, tmp_path):
    model = _wrap(LAYERS[name]())
    _randomize(model)
    x = _images()
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: the registry resolves them
    assert [type(layer).__name__ for layer in loaded.layers] == [
        type(layer).__name__ for layer in model.layers
    ]
    for saved, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


def _classifier(layer: keras.layers.Layer) -> keras.Model:
    inputs = keras.Input(INPUT_SHAPE)
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = layer(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, dtype="float32", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return model


def _fit_one_step(model: keras.Model) -> float:
    history = model.fit(_images(8), np.arange(8) % 3, batch_size=8, epochs=1, verbose=0)
    return history.history["loss"][0]


@pytest.mark.parametrize("name", list(LAYERS))
def test_one_fit_step_updates_every_weight(name):
    layer = LAYERS[name]()
    model = _classifier(layer)
    before = [w.numpy().copy() for w in model.weights]
    loss = _fit_one_step(model)
    assert np.isfinite(loss)
    for variable, old in zip(model.weights, before):
        # Gradients reach the stem through the layer; BN moving statistics move too.
        assert not np.array_equal(variable.numpy(), old), variable.path
    assert len(model.trainable_weights) == 4 + len(layer.trainable_weights)


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", list(LAYERS))
def test_mixed_float16(name, mixed_float16):
    x = _images()
    keras.mixed_precision.set_global_policy("float32")
    reference = _wrap(LAYERS[name]())
    _randomize(reference)
    expected = reference.predict(x, verbose=0)

    keras.mixed_precision.set_global_policy("mixed_float16")
    model = _wrap(LAYERS[name]())
    model.set_weights(reference.get_weights())
    assert all(w.dtype == "float32" for w in model.weights)  # float32 master weights
    out = model(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(np.asarray(out, "float32"), expected, rtol=2e-2, atol=2e-2)

    assert np.isfinite(_fit_one_step(_classifier(LAYERS[name]())))


def test_tflite_export_uses_builtin_ops_and_matches_keras():
    tf = pytest.importorskip("tensorflow")
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    inputs = keras.Input(INPUT_SHAPE)
    x = ConvBNAct(8, order="act_bn")(inputs)
    x = BlurPool2D(3, 2, "reflect")(x)
    x = BlurPool2D(4, 1, "zero")(x)
    x = blur_max_pool()(x)
    x = SqueezeExcite(gate="hard_sigmoid")(x)
    x = DepthwiseSeparableBlock(8, se_ratio=0.5, residual=True)(x)
    model = keras.Model(inputs, x)
    _randomize(model)

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    interpreter = litert.Interpreter(
        model_content=converter.convert(),
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    # Zero padding may be folded into the convolution's SAME padding, so no PAD check.
    assert {"DEPTHWISE_CONV_2D", "MIRROR_PAD", "MAX_POOL_2D", "MEAN", "MUL"} <= ops, ops

    image = _images(1)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model.predict(image, verbose=0), atol=1e-4)

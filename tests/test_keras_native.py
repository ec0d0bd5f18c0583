"""A Keras user's habits on recipe models (issue 14): loading in a fresh process, labels, schedules, heads, errors.

Each numbered case of the issue has its tests here: (1) fit on integer and one-hot
labels, and a failed fit leaves the model usable; (2) ``keras.models.load_model``
in a fresh process after only ``import keras_effcnn``; (3) keras.applications
arguments; (4) the schedule follows the ``fit`` it is given; (5) one-line errors.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

import keras_effcnn
from keras_effcnn import models, presets, recipes
from keras_effcnn.losses import ClassificationCrossentropy
from keras_effcnn.metrics import ClassificationAccuracy
from keras_effcnn.recipe_model import RecipeMixin, SAMRecipeModel
from keras_effcnn.sam import SAMModel


def _images(n: int, shape=(28, 28, 1), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _labels(n: int, k: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, n)


def _smoothed_cross_entropy(logits: np.ndarray, labels: np.ndarray, eps: float) -> float:
    """NumPy reference: mean over the batch of -sum(q * log softmax(z)), q = (1 - eps) one_hot + eps / K."""
    z = logits.astype(np.float64)
    log_p = z - z.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    k = z.shape[-1]
    q = np.full_like(z, eps / k)
    q[np.arange(len(labels)), labels] += 1 - eps
    return float(-(q * log_p).sum(-1).mean())


# ----------------------------------------------------------------------------- (1) labels


def test_loss_and_accuracy_take_integer_column_and_one_hot_labels_alike():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2, 0])
    loss = ClassificationCrossentropy(from_logits=True, label_smoothing=0.2)
    expected = _smoothed_cross_entropy(logits, labels, 0.2)
    for y in (labels, labels[:, None], np.eye(4, dtype=np.float32)[labels]):
        assert float(loss(y, logits)) == pytest.approx(expected, rel=1e-5)
        metric = ClassificationAccuracy()
        metric.update_state(y, logits)
        assert float(metric.result()) == pytest.approx(np.mean(logits.argmax(-1) == labels))


def test_recipe_model_fits_integer_then_one_hot_labels_and_survives_a_failed_call():
    model = recipes.mnist_1500(label_smoothing=0.1)
    x, y = _images(32), _labels(32)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)                       # keras.datasets style (N,)
    model.fit(x, y[:, None], batch_size=16, epochs=1, verbose=0)              # CIFAR-10 style (N, 1)
    model.fit(x, np.eye(10, dtype=np.float32)[y], batch_size=16, epochs=1, verbose=0)
    with pytest.raises(ValueError):
        model.fit(x, np.zeros((32, 3), np.float32), batch_size=16, verbose=0)  # 3 columns for 10 classes
    with pytest.raises(ValueError):
        model.evaluate(x, np.zeros((32, 3), np.float32), verbose=0)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)             # still usable
    assert np.isfinite(history.history["loss"][0])
    # evaluate on integer labels computes the recipe's smoothed loss (BatchNorm in inference mode).
    result = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    logits = np.asarray(model(x, training=False))
    assert result["loss"] == pytest.approx(_smoothed_cross_entropy(logits, y, 0.1), rel=1e-4)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == y))


def test_sam_recipe_model_trains_on_integer_labels():
    model = recipes.build("mnist_phase10_sam")
    assert isinstance(model, SAMRecipeModel) and isinstance(model, SAMModel) and isinstance(model, RecipeMixin)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(_images(16), _labels(16), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


# ----------------------------------------------------------------------------- (2) saving


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    import keras_effcnn
    cheap = not any(m in sys.modules for m in ("keras_effcnn.data", "keras_effcnn.recipes", "keras_effcnn.export"))
    out = {"cheap_import": cheap}
    for name in sys.argv[1:]:
        model = keras.models.load_model(name + ".keras", safe_mode=True)
        x = np.load(name + ".x.npy")
        np.save(name + ".loaded.npy", np.asarray(model(x, training=False)))
        out[name] = {"class": type(model).__name__, "recipe": model.training_plan.to_dict(),
                     "loss": type(model.loss).__name__, "smoothing": model.loss.get_config()["label_smoothing"],
                     "lr_schedule": keras.saving.serialize_keras_object(model.optimizer)["config"]["learning_rate"]["class_name"],
                     "rho": getattr(model, "rho", None)}
    print("RESULT" + json.dumps(out))
""")


def test_saved_recipe_models_load_in_a_fresh_process_after_import_keras_effcnn(tmp_path):
    saved = {}
    # rho=0.07: not SAMModel's default, so the test sees whether it was saved.
    for recipe in (recipes.get_recipe("cifar10_140k"), recipes.get_recipe("mnist_phase10_sam").replace(sam_rho=0.07)):
        model = recipes.build(recipe)
        x = _images(2, model.input_shape[1:])
        stem = str(tmp_path / recipe.name)
        model.save(stem + ".keras")
        np.save(stem + ".x.npy", x)
        np.save(stem + ".saved.npy", np.asarray(model(x, training=False)))
        saved[stem] = (model, recipe)
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, *saved], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["cheap_import"], "import keras_effcnn must not import the data pipelines, recipes or export"
    for stem, (model, recipe) in saved.items():
        loaded = out[stem]
        assert loaded["class"] == type(model).__name__
        assert loaded["recipe"] == json.loads(recipe.to_json())  # the training plan survives saving
        assert loaded["loss"] == "ClassificationCrossentropy"
        assert loaded["smoothing"] == recipe.label_smoothing
        assert loaded["lr_schedule"] == "OneCycle"
        np.testing.assert_array_equal(np.load(stem + ".loaded.npy"), np.load(stem + ".saved.npy"))
    sam = out[str(tmp_path / "mnist_phase10_sam")]
    assert sam["class"] == "SAMRecipeModel" and sam["rho"] == 0.07


# ----------------------------------------------------------------------------- (4) the schedule


def _one_cycle(step: int, max_lr: float, total: int, pct: float = 0.3, div: float = 25.0, final: float = 1e4):
    """PyTorch's OneCycleLR (two phases, cosine), written out."""
    initial, low = max_lr / div, max_lr / div / final
    warm_end = pct * total - 1
    if step <= warm_end:
        start, end, a, b = 0.0, warm_end, initial, max_lr
    else:
        start, end, a, b = warm_end, total - 1.0, max_lr, low
    t = min(1.0, (step - start) / (end - start))
    return b + (a - b) / 2 * (1 + math.cos(math.pi * t))


class _RecordLR(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate))  # the rate of the coming step


def test_plain_fit_sizes_the_one_cycle_schedule_to_its_own_epochs_and_steps():
    model = recipes.mnist_1500()
    recipe = model.training_plan
    assert recipe.schedule == "onecycle" and recipe.epochs * recipe.steps_per_epoch() > 10_000
    x, y = _images(64), _labels(64)
    record = _RecordLR()
    model.fit(x, y, batch_size=16, epochs=5, verbose=0, callbacks=[record])   # 4 steps x 5 epochs
    expected = [_one_cycle(s, recipe.learning_rate, 20) for s in range(20)]
    np.testing.assert_allclose(record.rates, expected, rtol=1e-4)
    assert max(record.rates) == pytest.approx(recipe.learning_rate, rel=1e-5)   # the peak is reached
    # A second fit runs a new cycle over its own 2 x 4 steps, from the step it starts at.
    record = _RecordLR()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[record])
    np.testing.assert_allclose(record.rates, [_one_cycle(s, recipe.learning_rate, 8) for s in range(8)], rtol=1e-4)
    assert int(model.optimizer.iterations) == 28


def test_a_users_own_optimizer_is_left_alone():
    model = recipes.mnist_1500()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=ClassificationCrossentropy(from_logits=True))
    record = _RecordLR()
    model.fit(_images(32), _labels(32), batch_size=16, epochs=2, verbose=0, callbacks=[record])
    assert record.rates == pytest.approx([0.01] * 4)


# ----------------------------------------------------------------------------- (3) keras.applications arguments


def test_num_classes_classes_and_classifier_activation():
    model = recipes.mnist_1500(num_classes=3, classifier_activation="softmax")
    assert model.output_shape == (None, 3)
    probs = np.asarray(model(_images(4), training=False))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert model.loss.get_config()["from_logits"] is False
    assert models.build("effcnn_mnist", classes=4).output_shape == (None, 4)
    with pytest.raises(ValueError, match="disagree"):
        recipes.mnist_1500(num_classes=3, classes=4)


def test_variable_input_size_and_headless_models():
    model = models.build("effcnn_cifar10", input_shape=(None, None, 3), include_top=False, pooling="avg")
    for size in (32, 48):
        assert np.asarray(model(_images(1, (size, size, 3)), training=False)).shape == (1, 192)
    assert models.build("effcnn_mnist", include_top=False, pooling="max").output_shape == (None, 16)
    assert models.build("effcnn_mnist", include_top=False).output_shape == (None, 4, 4, 16)
    assert recipes.mnist_1500(input_shape=(None, None, 1)).output_shape == (None, 10)
    with pytest.raises(ValueError, match="gap_head"):
        models.build("paper_mnist", input_shape=(None, None, 1), gap_head=False)
    with pytest.raises(ValueError, match="pooling"):
        models.build("effcnn_mnist", pooling="avg")


def test_pretrained_trunk_with_a_new_head_loads_the_trunk_and_says_so(caplog):
    reference = models.build("effcnn_mnist")
    reference.load_weights(presets.get_preset("mnist").weights_path)
    with caplog.at_level(logging.WARNING, logger="keras_effcnn"):
        model = recipes.mnist_1500(weights="mnist", num_classes=4)
    assert "new, untrained head: logits" in caplog.text
    for layer in model.layers:
        if layer.weights and layer.name != "logits":
            for a, b in zip(layer.get_weights(), reference.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b, err_msg=layer.name)
    assert model.get_layer("logits").get_weights()[0].shape == (16, 4)
    headless = models.build("effcnn_mnist", include_top=False, pooling="avg", weights="mnist")
    np.testing.assert_array_equal(headless.get_layer("b4").get_weights()[0],
                                  reference.get_layer("b4").get_weights()[0])


def test_shipped_weights_load_unchanged_into_the_default_models():
    for name in presets.list_presets():
        preset = presets.get_preset(name)
        plain = models.build(preset.builder)
        plain.load_weights(preset.weights_path)
        model = keras_effcnn.from_preset(name)
        assert [v.path for v in model.weights] == [v.path for v in plain.weights]
        for a, b in zip(model.get_weights(), plain.get_weights()):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- (5) errors


def test_weights_of_another_model_are_named_as_such(tmp_path):
    with pytest.raises(ValueError, match=r"weights='mnist' .*belong to another model.*use weights='cifar10_140k'"):
        recipes.cifar10_140k(weights="mnist")
    path = tmp_path / "mnist.weights.h5"
    shutil.copy(presets.get_preset("mnist").weights_path, path)
    with pytest.raises(ValueError, match="belong to another model"):
        models.build("effcnn_cifar10", weights=path)


def test_damaged_model_files_get_one_line_errors(tmp_path):
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip" * 10)
    no_config = tmp_path / "no_config.keras"
    with zipfile.ZipFile(no_config, "w") as archive:
        archive.writestr("metadata.json", "{}")
    with pytest.raises(ValueError, match="not a .keras model archive"):
        models.load_model(corrupt)
    with pytest.raises(ValueError, match="without config.json"):
        models.load_model(no_config)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_model(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match="without config.json"):
        recipes.mnist_1500(weights=no_config)


def test_cli_reports_a_damaged_model_file_in_one_line(tmp_path, capsys):
    from keras_effcnn import cli

    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"garbage")
    assert cli.main(["evaluate", str(corrupt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a .keras model archive" in err


def test_a_labels_file_with_the_wrong_number_of_lines_is_refused(tmp_path):
    from keras_effcnn import export

    shipped = presets.WEIGHTS_DIR / "mnist_1500_int8.tflite"
    path = tmp_path / "model.tflite"
    shutil.copy(shipped, path)
    assert export.read_labels(path) == list(presets.DATASETS["mnist"].label_names)  # the embedded labels
    export.labels_file(path).write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="has 3 labels but model.tflite outputs 10 classes"):
        export.read_labels(path)
    export.labels_file(path).write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    with pytest.raises(ValueError, match="differs from the labels embedded"):
        export.read_labels(path)


# ----------------------------------------------------------------------------- presets and checks


def test_presets_hold_each_variants_facts():
    assert keras_effcnn.list_presets() == ["cifar10_140k", "mnist_1500"]
    for name in presets.list_presets():
        preset = presets.get_preset(name)
        results = json.loads((presets.WEIGHTS_DIR / preset.results_file).read_text())
        assert preset.metrics["test_accuracy"] == results["test"]["accuracy"]
        assert preset.metrics["params"] == results["params"]
        assert preset.recipe_record().to_dict()["model"] == results["recipe"]["model"]
        assert preset.input_shape == presets.DATASETS[preset.dataset].input_shape
        assert presets.get_preset(preset.aliases[0]) is preset
        assert recipes.pretrained_weights(preset.aliases[0]) == preset.weights_path
    assert presets.dataset_for_input_shape((28, 28, 1)) == "mnist"
    assert presets.dataset_for_input_shape((32, 32, 3)) == "cifar10"
    with pytest.raises(ValueError, match="pass --dataset"):
        presets.dataset_for_input_shape((64, 64, 3))


def test_argument_errors_share_one_wording():
    pattern = r"^`\w+` must be .+; got .+\.$"
    errors = []
    for call in (lambda: recipes.get_recipe("mnist_1500").replace(epochs=0),
                 lambda: models.build("nope"),
                 lambda: models.build("effcnn_mnist", pooling="sum", include_top=False),
                 lambda: presets.get_dataset("imagenet")):
        with pytest.raises(ValueError) as info:
            call()
        errors.append(str(info.value))
    for message in errors:
        assert __import__("re").match(pattern, message), message

"""Knowledge distillation against NumPy: the soft term, its gradient, and the loss a recipe model trains on."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_effcnn import distillation, models, recipes


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_kd(teacher, student, temperature):
    log_t = _log_softmax(teacher.astype(np.float64) / temperature)
    log_s = _log_softmax(student.astype(np.float64) / temperature)
    return temperature**2 * np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=-1))


def test_soft_term_and_its_gradient_match_numpy():
    rng = np.random.default_rng(0)
    teacher = rng.normal(0, 3, (6, 10)).astype("float32")
    student = tf.Variable(rng.normal(0, 3, (6, 10)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = distillation.distillation_loss(teacher, student, temperature=3.0)
    np.testing.assert_allclose(float(loss), numpy_kd(teacher, student.numpy(), 3.0), rtol=1e-5)
    # d/ds of T^2 KL at temperature T: T * (softmax(s/T) - softmax(t/T)) / batch.
    grad = tape.gradient(loss, student).numpy()
    expected = 3.0 * (np.exp(_log_softmax(student.numpy() / 3.0)) - np.exp(_log_softmax(teacher / 3.0))) / 6
    np.testing.assert_allclose(grad, expected, atol=1e-6)
    assert float(distillation.distillation_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    teacher = models.build("effcnn_mnist", widths=(12, 16, 16, 20, 24))
    path = tmp_path_factory.mktemp("teacher") / "teacher.keras"
    teacher.save(path)
    return path


def _student(teacher_path, **changes):
    recipe = recipes.get_recipe("mnist_1500_fast").replace(
        teacher=str(teacher_path), distill_alpha=0.7, distill_temperature=3.0, label_smoothing=0.1, **changes)
    return recipes.build(recipe)


def _batch(n=8):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 28, 28, 1)).astype("float32"), rng.integers(0, 10, n)


@pytest.mark.backend_neutral  # also run with KERAS_BACKEND=jax in CI
def test_training_loss_mixes_the_recipe_loss_with_the_teacher(teacher_path):
    student = _student(teacher_path)
    x, labels = _batch()
    y = np.eye(10, dtype="float32")[labels]
    y_pred = student(x, training=False)
    teacher = distillation.load_teacher(teacher_path)
    t = np.asarray(teacher(x, training=False))
    s = np.asarray(y_pred)
    smoothed = 0.9 * y + 0.1 / 10
    hard = np.mean(-np.sum(smoothed * _log_softmax(s.astype(np.float64)), axis=-1))
    expected = 0.3 * hard + 0.7 * numpy_kd(t, s, 3.0)
    np.testing.assert_allclose(float(student.compute_loss(x=x, y=y, y_pred=y_pred, training=True)), expected,
                               rtol=1e-5)
    # Evaluation losses are the recipe's own.
    np.testing.assert_allclose(float(student.compute_loss(x=x, y=y, y_pred=y_pred, training=False)), hard,
                               rtol=1e-5)


def test_fit_trains_the_student_only_and_a_saved_student_keeps_its_teacher(teacher_path, data_dir, tmp_path):
    teacher = distillation.load_teacher(teacher_path)
    before = [w.copy() for w in teacher.get_weights()]
    student = _student(teacher_path, epochs=1)
    start = [w.copy() for w in student.get_weights()]
    recipes.fit(student, data_dir, subset=512, verbose=0, evaluate_test=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights()))
    assert any(not np.array_equal(a, b) for a, b in zip(start, student.get_weights()))
    student.save(tmp_path / "student.keras")
    loaded = models.load_model(tmp_path / "student.keras")
    assert loaded.training_plan.teacher == str(teacher_path)
    x, labels = _batch()
    y = np.eye(10, dtype="float32")[labels]
    y_pred = student(x, training=False)
    np.testing.assert_allclose(float(loaded.compute_loss(x=x, y=y, y_pred=y_pred, training=True)),
                               float(student.compute_loss(x=x, y=y, y_pred=y_pred, training=True)), rtol=1e-6)


def test_teacher_that_cannot_teach_is_refused_at_build(tmp_path, teacher_path):
    with pytest.raises(FileNotFoundError, match="teacher .* does not exist"):
        _student(tmp_path / "missing.keras")
    models.build("effcnn_mnist", num_classes=7).save(tmp_path / "seven.keras")
    with pytest.raises(ValueError, match="outputs 7 classes but the student has 10"):
        _student(tmp_path / "seven.keras")
    models.build("effcnn_mnist", classifier_activation="softmax").save(tmp_path / "softmax.keras")
    with pytest.raises(ValueError, match="ends in a softmax"):
        _student(tmp_path / "softmax.keras")
    models.build("effcnn_cifar10").save(tmp_path / "cifar.keras")
    with pytest.raises(ValueError, match="takes inputs of shape"):
        _student(tmp_path / "cifar.keras")
    for field, value in (("distill_alpha", 0.0), ("distill_alpha", 1.5), ("distill_temperature", 0.0),
                         ("teacher", "")):
        with pytest.raises(ValueError, match=field):
            recipes.get_recipe("mnist_1500_fast").replace(**{field: value})
    with pytest.raises(ValueError, match="temperature"):
        distillation.distillation_loss(np.zeros((1, 2)), np.zeros((1, 2)), temperature=-1.0)
    recipe = recipes.get_recipe("mnist_1500_fast").replace(teacher=str(teacher_path), distill_alpha=0.25)
    assert recipes.Recipe.from_json(recipe.to_json()) == recipe

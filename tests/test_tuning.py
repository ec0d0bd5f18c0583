"""Hyperparameter search: the recipe hypermodel, the parameter budget, resuming and distribution.

Searches that only test the tuner's bookkeeping replace ``RecipeHyperModel.fit``
by a recorder (the models are still built, so budgets are real); the
end-to-end searches, among them the real budgeted Bayesian oracle, train on real
MNIST slices and check each score against the trial's own validation accuracy.
"""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import keras_tuner as kt
import pytest

from keras_effcnn import cli, data, models, recipes, tuning, tuning_launcher
from keras_effcnn.recipes import Recipe

ROOT = Path(__file__).resolve().parents[1]
MNIST = recipes.get_recipe("mnist_1500")
MNIST_WIDTHS = (8, 12, 12, 14, 16)  # effcnn_mnist's default widths

# Trainable parameters of effcnn_mnist per width multiplier (no SE), from models.count_params.
WIDTH_SPACE = {"width_multiplier": [0.5, 0.75, 1.0, 1.25, 1.5]}


def _record_fit(monkeypatch, interrupt_at: int | None = None) -> list[Recipe]:
    """Replaces training by a recorder; returns the list of trained recipes (in call order)."""
    trained: list[Recipe] = []

    def fit(self, hp, model, *args, **kwargs):
        trained.append(model.training_plan)
        if interrupt_at is not None and len(trained) == interrupt_at:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of a trial
        # A score that depends on the configuration, so the best trial is known.
        return {"val_accuracy": model.training_plan.model_options["widths"][0] / 100}

    monkeypatch.setattr(tuning.RecipeHyperModel, "fit", fit)
    return trained


def _trials(project: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(project.glob("trial_*/trial.json")):
        trial = json.loads(path.read_text())
        out[trial["trial_id"]] = trial
    return out


# ----------------------------------------------------------------------------- hyperparameters -> recipe


def test_hyperparameters_map_onto_recipe_fields():
    hm = tuning.RecipeHyperModel(MNIST, space=["width_multiplier", "se_ratio", "swa_start", "schedule",
                                                "lr_div_factor", "learning_rate", "mixup_alpha", "batch_size"])
    recipe = hm.recipe_for({"width_multiplier": 0.75, "se_ratio": 0.0, "swa_start": 1.0, "schedule": "cyclic",
                            "lr_div_factor": 25.0, "learning_rate": 0.1, "mixup_alpha": 0.4, "batch_size": 64})
    assert recipe.model_options["widths"] == [round(w * 0.75) for w in MNIST_WIDTHS] == [6, 9, 9, 10, 12]
    assert recipe.model_options["se_ratio"] is None  # 0 means no SE
    assert recipe.swa_start is None  # 1.0 means SWA never starts
    assert recipe.schedule == "cyclic" and recipe.schedule_options == {"base_lr": pytest.approx(0.1 / 25)}
    assert (recipe.learning_rate, recipe.mixup_alpha, recipe.batch_size) == (0.1, 0.4, 64)
    assert recipe.validation_split == 0.1  # the recipe has none: the objective needs one
    # Fields outside the space keep the base recipe's values.
    assert (recipe.label_smoothing, recipe.crop_padding, recipe.epochs) == (
        MNIST.label_smoothing, MNIST.crop_padding, MNIST.epochs)

    onecycle = hm.recipe_for({"schedule": "onecycle", "lr_div_factor": 10.0, "swa_start": 0.5, "se_ratio": 0.25})
    assert onecycle.schedule_options == {"div_factor": 10.0}
    assert onecycle.swa_start == 0.5 and onecycle.model_options["se_ratio"] == 0.25
    # Hyperband's round budget becomes the recipe's epochs.
    assert hm.recipe_for({"tuner/epochs": 3}).epochs == 3


def test_stage_widths_give_one_choice_per_stage():
    hm = tuning.RecipeHyperModel(MNIST, space={"stage_widths": [0.5, 1.0]})
    hp = kt.HyperParameters()
    hm.declare_hyperparameters(hp)
    assert [p.name for p in hp.space] == [f"width_{i}" for i in range(1, 6)]
    assert [sorted(p.values) for p in hp.space] == [sorted({round(w / 2), w}) for w in MNIST_WIDTHS]
    widths = [4, 12, 6, 14, 8]
    recipe = hm.recipe_for({f"width_{i}": w for i, w in enumerate(widths, 1)})
    assert recipe.model_options["widths"] == widths


def test_default_space_follows_the_builder_options():
    assert set(tuning.default_space(MNIST)) == set(tuning.KNOBS) - {"stage_widths"}
    # paper_cifar10 takes no widths, BlurPool or SE options: those knobs are left out.
    paper = tuning.default_space(recipes.get_recipe("paper_cifar10"))
    assert not {"width_multiplier", "blurpool", "se_ratio"} & set(paper) and "dropout" in paper
    assert tuning.default_space(recipes.get_recipe("cifar10_140k"))["cutout_length"] == [0, 8, 16]


def test_every_default_configuration_builds_the_recipe_it_names():
    hm = tuning.RecipeHyperModel("cifar10_140k")
    hp = kt.HyperParameters()
    hm.declare_hyperparameters(hp)
    assert hm.recipe_for(hp).replace(schedule_options={}) == hm.base_recipe.replace(
        model_options={"widths": [32, 64, 128, 192], "blurpool": True, "blur_filter_size": 3, "se_ratio": 0.0625,
                       "dropout": 0.0})


def test_count_params_is_the_built_models_trainable_count():
    hm = tuning.RecipeHyperModel(MNIST, budget=1_500,
                                 space={"width_multiplier": [0.5, 1.5], "se_ratio": [0.0, 0.25]})
    for values in ({"width_multiplier": 0.5, "se_ratio": 0.0}, {"width_multiplier": 1.5, "se_ratio": 0.25}):
        recipe = hm.recipe_for(values)
        trainable = models.count_params(models.build(recipe.model, **recipe.model_options))["trainable"]
        assert hm.count_params(values) == trainable
        assert hm.within_budget(values) == (trainable <= 1_500)
    assert hm.within_budget({"width_multiplier": 0.5, "se_ratio": 0.0})
    assert not hm.within_budget({"width_multiplier": 1.5, "se_ratio": 0.25})


@pytest.mark.parametrize("kwargs, match", [
    (dict(space=["warp_factor"]), "warp_factor"),
    (dict(space=["width_multiplier", "stage_widths"]), "stage_widths"),
    (dict(space={"dropout": []}), "dropout"),
    (dict(space={"learning_rate": {"min": 0.1}}), "learning_rate"),
    (dict(budget=0), "budget"),
    (dict(validation_split=0.0), "validation_split"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tuning.RecipeHyperModel(MNIST, **kwargs)


def test_bad_tuner_arguments_name_the_argument(tmp_path):
    hm = tuning.RecipeHyperModel(MNIST, space=WIDTH_SPACE)
    with pytest.raises(ValueError, match="tuner='grid'"):
        tuning.make_tuner(hm, "grid", directory=tmp_path)
    with pytest.raises(ValueError, match="max_trials=0"):
        tuning.make_tuner(hm, "random", max_trials=0, directory=tmp_path)
    with pytest.raises(ValueError, match="sampling"):
        tuning.Range(0.0, 1.0, sampling="log")


# ----------------------------------------------------------------------------- the parameter budget


def test_budget_below_every_model_trains_nothing_and_says_so(monkeypatch, tmp_path):
    trained = _record_fit(monkeypatch)
    hm = tuning.RecipeHyperModel(MNIST, budget=500, space=WIDTH_SPACE)  # the smallest has 589
    tuner = tuning.make_tuner(hm, "random", max_trials=3, directory=tmp_path)
    tuner.search(verbose=0)
    summary = tuner.summary()
    assert trained == [] and tuner.oracle.trials == {}
    # Each of the 5 configurations is rejected once (a rejected one is never drawn again), then the search stops.
    assert summary.trials_completed == 0 and summary.rejected_over_budget == 5 and summary.budget_exhausted
    assert summary.best_trial_id is None and tuner.write_best_recipe() is None
    assert "rejected over budget: 5" in summary.format()


@pytest.mark.parametrize("algorithm", ["random", "hyperband"])
def test_over_budget_configurations_are_redrawn_never_trained(monkeypatch, tmp_path, algorithm):
    trained = _record_fit(monkeypatch)
    counted: dict[str, int] = {}
    hm = tuning.RecipeHyperModel(MNIST.replace(epochs=3), budget=1_500,
                                 space={**WIDTH_SPACE, "se_ratio": [0.0, 0.25], "mixup_alpha": [0.0, 0.2]})
    count = hm.count_params

    def spy(values):
        n = count(values)
        if isinstance(values, dict):  # the oracle's checks (build() passes a Recipe)
            counted[json.dumps(values, sort_keys=True)] = n
        return n

    hm.count_params = spy
    tuner = tuning.make_tuner(hm, algorithm, max_trials=4, directory=tmp_path)
    tuner.search(verbose=0)
    summary = tuner.summary()
    params = [count(r) for r in trained]
    assert len(trained) == summary.trials_completed == 4  # rejections did not use up max_trials
    assert max(params) <= 1_500
    over = sum(n > 1_500 for n in counted.values())
    assert over >= 1 and summary.rejected_over_budget == tuner.oracle.rejected_over_budget >= over
    # The best trial is the one the recorder scored highest (widest first stage within budget).
    assert summary.best_val_accuracy == max(r.model_options["widths"][0] for r in trained) / 100
    assert summary.best_params <= 1_500
    if algorithm == "hyperband":
        assert [r.epochs for r in trained] == [1, 1, 1, 3]  # bracket 1 of max_epochs=3, factor 3
        # Round 1 retrains the best configuration of round 0 for longer.
        assert trained[3].model_options["widths"][0] == max(r.model_options["widths"][0] for r in trained[:3])


def test_real_bayesian_search_keeps_the_budget_and_scores_on_validation(monkeypatch, tmp_path, data_dir):
    """The stock Gaussian process behind the budget filter, with tiny real trials (400
    MNIST images, 1 epoch, 3 steps): a random point, then a proposal of the process.
    Half the space is over the budget."""
    pytest.importorskip("sklearn", reason="KerasTuner's Bayesian optimisation needs scikit-learn")
    space = {"width_multiplier": [0.5, 0.75, 1.0, 1.25, 1.5], "se_ratio": [0.0, 0.25]}
    hm = tuning.RecipeHyperModel(MNIST.replace(epochs=1, batch_size=100), budget=1_500, space=space,
                                 validation_split=0.25)
    count = hm.count_params
    seen: dict[str, int] = {}  # every configuration the oracle checked -> its size

    def spy_count(values):
        n = count(values)
        if isinstance(values, dict):
            seen[json.dumps({k: v for k, v in values.items() if not k.startswith("tuner/")}, sort_keys=True)] = n
        return n

    hm.count_params = spy_count
    real_fit, trained = recipes.fit, []

    def spy_fit(model, data_dir=None, **kwargs):
        assert kwargs["evaluate_test"] is False  # a search never looks at the test set
        result = real_fit(model, data_dir, **kwargs)
        recipe = model.training_plan
        # The validation accuracy measured independently of the search, on the held-out split.
        val = data.load("mnist", data_dir, batch_size=100, validation_split=0.25, seed=recipe.seed, subset=400).val
        trained.append((count(recipe), model.evaluate(val, return_dict=True, verbose=0)["accuracy"]))
        return result

    monkeypatch.setattr(recipes, "fit", spy_fit)
    tuner = tuning.make_tuner(hm, "bayesian", max_trials=2, num_initial_points=1, seed=1, directory=tmp_path)
    tuner.search(data_dir=data_dir, subset=400, verbose=0)
    summary = tuner.summary()
    assert isinstance(tuner.oracle, kt.oracles.BayesianOptimizationOracle)
    assert hasattr(tuner.oracle.gpr, "X_train_")  # the Gaussian process was fitted and proposed trial 2
    # No over-budget model trained; every over-budget configuration the oracle met is counted once.
    assert len(trained) == summary.trials_completed == 2 and max(n for n, _ in trained) <= 1_500
    assert summary.rejected_over_budget == sum(n > 1_500 for n in seen.values())
    # Fitted to one point, the process proposes the corner farthest from it (width x1.5, no SE:
    # 2,715 parameters), so the filter had something to reject.
    assert summary.rejected_over_budget >= 1
    # Each trial's score is the validation accuracy of its own trained model.
    trials = [tuner.oracle.trials[tid] for tid in tuner.trained_trials]
    for trial, (params, val_accuracy) in zip(trials, trained):
        assert trial.score == pytest.approx(val_accuracy, abs=1e-6)
        assert hm.count_params(trial.hyperparameters.values) == params
    assert summary.best_val_accuracy == max(acc for _, acc in trained)


def test_build_refuses_an_over_budget_model_before_compiling(monkeypatch):
    hm = tuning.RecipeHyperModel(MNIST, budget=1_500, space=WIDTH_SPACE)
    monkeypatch.setattr(recipes, "build", lambda *a, **k: pytest.fail("an over-budget recipe was built"))
    hp = kt.HyperParameters()
    hm.declare_hyperparameters(hp)
    hp.values["width_multiplier"] = 1.5
    with pytest.raises(kt.errors.FailedTrialError, match=tuning.OVER_BUDGET):
        hm.build(hp)


# ----------------------------------------------------------------------------- resuming


def test_an_interrupted_search_resumes_where_it_stopped(monkeypatch, tmp_path):
    trained = _record_fit(monkeypatch, interrupt_at=2)
    hm = tuning.RecipeHyperModel(MNIST, space={**WIDTH_SPACE, "mixup_alpha": [0.0, 0.2]})
    with pytest.raises(KeyboardInterrupt):
        tuning.make_tuner(hm, "random", max_trials=3, directory=tmp_path, project_name="p").search(verbose=0)
    before = _trials(tmp_path / "p")
    assert [t["status"] for t in before.values()] == ["COMPLETED", "RUNNING"]

    trained = _record_fit(monkeypatch)
    tuner = tuning.make_tuner(tuning.RecipeHyperModel(MNIST, space={**WIDTH_SPACE, "mixup_alpha": [0.0, 0.2]}),
                              "random", max_trials=3, directory=tmp_path, project_name="p")
    tuner.search(verbose=0)
    after = _trials(tmp_path / "p")
    # The interrupted trial ran again with its own hyperparameters, then one new trial: two, not three.
    assert len(trained) == 2 and sorted(after) == ["0", "1", "2"]
    assert all(t["status"] == "COMPLETED" for t in after.values())
    assert after["0"]["metrics"] == before["0"]["metrics"]  # finished work kept, not redone
    assert after["1"]["hyperparameters"]["values"] == before["1"]["hyperparameters"]["values"]
    assert trained[0] == hm.recipe_for(before["1"]["hyperparameters"]["values"])


# ----------------------------------------------------------------------------- the objective


def test_swa_trials_are_scored_on_the_averaged_weights(monkeypatch, data_dir):
    """SWA installs its average after the last logged validation; the score must see it."""
    recipe = MNIST.replace(swa_start=0.5, epochs=1, validation_split=0.2)
    hm = tuning.RecipeHyperModel(recipe, space=["dropout"])
    model = recipes.build(recipe)
    stale = {"val_accuracy": [0.123], "val_loss": [9.9], "accuracy": [0.5], "loss": [1.0]}

    def fake_fit(model, data_dir=None, **kwargs):
        model.set_weights([w * 0.5 for w in model.get_weights()])  # "the average" differs from the last epoch
        return recipes.TrainResult(recipe=recipe, history=stale, test={}, wall_time_s=0.0, epochs=1, params={},
                                   macs=0)

    monkeypatch.setattr(recipes, "fit", fake_fit)
    metrics = hm.fit(kt.HyperParameters(), model, data_dir, subset=1_000)
    val = data.load("mnist", data_dir, batch_size=recipe.batch_size, validation_split=0.2, subset=1_000).val
    expected = model.evaluate(val, return_dict=True, verbose=0)
    assert metrics["val_accuracy"] == pytest.approx(expected["accuracy"]) != 0.123
    assert metrics["val_loss"] == pytest.approx(expected["loss"])
    assert metrics["accuracy"] == 0.5  # training metrics still come from the history


# ----------------------------------------------------------------------------- end to end on real data


def _tune_argv(tmp_path, data_dir, *extra):
    return ["tune", "mnist_1500", "--budget", "1500", "--epochs", "1", "--subset", "2000", "--quiet",
            "--space", "width_multiplier,label_smoothing", "--directory", str(tmp_path / "tuning"),
            "--project-name", "p", "--data-dir", str(data_dir), *extra]


def test_cli_search_resumes_and_its_best_recipe_trains(monkeypatch, tmp_path, data_dir, capsys):
    trained = _record_fit(monkeypatch)  # the search's bookkeeping; real trials: see the example's test
    assert cli.main(_tune_argv(tmp_path, data_dir, "--max-trials", "2")) == 0
    out = capsys.readouterr().out
    project = tmp_path / "tuning" / "p"
    trials = _trials(project)
    assert len(trained) == len(trials) == 2 and "trials trained:       2" in out
    scores = {tid: t["score"] for tid, t in trials.items()}
    summary = json.loads((project / "summary.json").read_text())
    best_id = max(scores, key=scores.get)
    assert summary["best_trial_id"] == best_id and summary["best_val_accuracy"] == scores[best_id]

    best = Recipe.from_json(project / "best_recipe.json")
    values = trials[best_id]["hyperparameters"]["values"]
    assert best.model_options["widths"] == [round(w * values["width_multiplier"]) for w in MNIST_WIDTHS]
    assert best.label_smoothing == values["label_smoothing"]
    assert (best.name, best.epochs, best.validation_split) == ("mnist_1500_tuned", 1, 0.1)
    assert json.loads((project / f"trial_{best_id}" / "recipe.json").read_text())["model_options"] == \
        best.model_options

    # Re-running with a larger max_trials continues the project: exactly one new trial trains.
    trained.clear()
    assert cli.main(_tune_argv(tmp_path, data_dir, "--max-trials", "3")) == 0
    assert len(trained) == 1 and len(_trials(project)) == 3
    capsys.readouterr()
    summary = json.loads((project / "summary.json").read_text())

    # `keras-effcnn train` accepts the best recipe file and trains it for real.
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    assert cli.main(["train", str(project / "best_recipe.json"), "--subset", "1000", "--quiet",
                     "--out", str(run_dir), "--data-dir", str(data_dir)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["params"]["trainable"] == summary["best_params"] <= 1_500
    assert results["recipe"] == Recipe.from_json(project / "best_recipe.json").to_dict()
    assert len(json.loads((run_dir / "history.json").read_text())["val_accuracy"]) == 1


def test_cli_reports_a_search_with_nothing_within_budget(tmp_path, data_dir, capsys):
    argv = _tune_argv(tmp_path, data_dir, "--max-trials", "2")
    argv[argv.index("--budget") + 1] = "100"
    argv[argv.index("--space") + 1] = "width_multiplier"
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    # 5 widths, each rejected once.
    assert "trials trained:       0" in captured.out and "rejected over budget: 5" in captured.out and "no further configuration within the budget" in captured.out
    assert "nothing to write" in captured.err


def test_example_runs_a_short_search_on_real_data(monkeypatch, tmp_path, data_dir, capsys):
    """The end-to-end check: two real trials, then the best recipe trained and tested."""
    monkeypatch.setenv("KERAS_EFFCNN_SMALL", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["tune_search.py", "--data-dir", str(data_dir)])
    runpy.run_path(str(ROOT / "examples" / "tune_search.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "trials trained:       2" in out
    project = next(tmp_path.glob("tuning/*"))
    trials = _trials(project)
    scores = [t["score"] for t in trials.values()]
    assert len(scores) == 2
    for t in trials.values():
        # The score is the trial's own final-epoch validation accuracy, not its training accuracy.
        recorded = {name: m["observations"][-1]["value"][0] for name, m in t["metrics"]["metrics"].items()}
        assert t["score"] == recorded["val_accuracy"]
        assert "accuracy" in recorded and "loss" in recorded
    assert f"best val_accuracy:    {max(scores):.4f}" in out
    best = Recipe.from_json(project / "best_recipe.json")
    assert models.count_params(recipes.build(best))["trainable"] <= 1_500
    accuracy = float(re.search(r"final-epoch test accuracy ([0-9.]+)", out).group(1))
    assert 0.0 <= accuracy <= 1.0


# A stand-in for `keras-effcnn tune` that needs no TensorFlow: it reports its role, then
# behaves as told for that role ("exit", "fail" or "hang").
_ROLE_SCRIPT = """
import os, sys, time
tid = os.environ["KERASTUNER_TUNER_ID"]
print(tid, os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"], flush=True)
action = sys.argv[1] if tid == "chief" else sys.argv[2]
if action == "fail":
    sys.exit(3)
if action == "hang":
    time.sleep(120)
"""


@pytest.mark.parametrize("chief, workers, timeout, ok", [
    ("hang", "exit", None, True),    # the normal end: workers done, the launcher stops the chief
    ("exit", "exit", None, True),    # a chief that exits by itself
    ("fail", "hang", None, False),   # a crashed chief: the waiting workers are stopped
    ("hang", "hang", 2.0, False),    # the time limit stops everything
])
def test_launcher_runs_and_stops_a_chief_and_workers(tmp_path, chief, workers, timeout, ok):
    run = tuning_launcher.run_distributed([sys.executable, "-c", _ROLE_SCRIPT, chief, workers], 2,
                                          timeout=timeout, log_dir=tmp_path, chief_grace_s=0.5, poll_s=0.1)
    assert run.ok is ok and run.timed_out is (timeout is not None)
    assert sorted(run.returncodes) == ["chief", "tuner0", "tuner1"]
    # Nothing waited for a hang to end: every hanging process was stopped by a signal
    # (a negative return code), where finishing its 120 s sleep would have returned 0.
    for tid, code in run.returncodes.items():
        if (chief if tid == "chief" else workers) == "hang":
            assert code is not None and code < 0, (tid, code)
    for tid, code in run.returncodes.items():
        if code is not None and code >= 0:  # (a process stopped early may not have printed yet)
            assert run.log_tail(tid).split() == [tid, "127.0.0.1", str(run.port)]
    if (chief, workers) == ("hang", "exit"):
        assert run.chief_stopped and run.returncodes["tuner0"] == run.returncodes["tuner1"] == 0
    if chief == "fail":
        assert run.returncodes["chief"] == 3 and run.returncodes["tuner0"] != 0


@pytest.mark.slow
def test_a_chief_and_two_workers_complete_a_search(tmp_path, data_dir, capsys):
    """Three processes on 127.0.0.1 (free port), stopped by the launcher; bounded by --timeout."""
    argv = _tune_argv(tmp_path, data_dir, "--max-trials", "4", "--workers", "2", "--timeout", "900",
                      "--threads-per-worker", "1")
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    project = tmp_path / "tuning" / "p"
    trials = _trials(project)
    assert sorted(trials) == ["0", "1", "2", "3"] and all(t["status"] == "COMPLETED" for t in trials.values())
    ran = []
    for worker in ("tuner0", "tuner1"):
        log = (project / "logs" / f"{worker}.log").read_text()
        ran += re.search(rf"worker {worker} finished: trained trials (\[.*\])", log).group(1).strip("[]").split(",")
    # Every trial was trained by exactly one of the workers; the chief only served the oracle.
    assert sorted(t.strip(" '") for t in ran if t.strip()) == ["0", "1", "2", "3"]
    assert "trials trained:       4" in out and (project / "best_recipe.json").exists()

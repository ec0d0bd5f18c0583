"""``keras-effcnn tune RECIPE``: a KerasTuner search over a recipe under a parameter budget."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from keras_effcnn.commands import add_data_args

# keras_effcnn.tuning.TUNERS; repeated here so that `keras-effcnn --help` does not import TensorFlow.
_TUNERS = ("random", "bayesian", "hyperband")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tune", help="search a recipe's hyperparameters with KerasTuner under a parameter budget",
        description="Search the paper's knobs (widths, BlurPool, SE, dropout, one-cycle/cyclic LR, Mixup, Cutout, "
        "label smoothing, SWA, SAM, batch size) around a recipe. Each trial trains through the recipe "
        "pipeline; the objective is the final-epoch accuracy on a validation split of the training set. "
        "Configurations over --budget are never trained. Re-running the same command continues the search. "
        "Writes the best configuration as a recipe JSON that `keras-effcnn train` accepts.")
    p.add_argument("recipe", help="recipe name (e.g. mnist_1500, cifar10_140k) or a recipe .json file")
    p.add_argument("--tuner", choices=_TUNERS, default="random", help="search algorithm (default: random)")
    p.add_argument("--max-trials", type=int, default=10,
                   help="trials to train, rejected configurations not counted (default: 10; "
                        "for hyperband a cap on its brackets)")
    p.add_argument("--budget", type=int, default=None, help="most trainable parameters a model may have")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per trial (hyperband: the largest round); default the recipe's")
    p.add_argument("--subset", type=int, default=None, help="train each trial on the first N training images")
    p.add_argument("--validation-split", type=float, default=None,
                   help="held-out fraction of the training set for the objective (default: the recipe's, else 0.1)")
    p.add_argument("--space", default=None,
                   help="comma-separated knobs to tune (default: every knob the model supports); see docs/tuning.md")
    p.add_argument("--seed", type=int, default=None, help="the search's seed (default: the recipe's seed)")
    p.add_argument("--directory", default="tuning", help="folder of tuning projects (default: tuning)")
    p.add_argument("--project-name", default=None, help="project folder name (default: RECIPE-TUNER)")
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of continuing the project")
    p.add_argument("--out", default=None,
                   help="where to write the best recipe (default: DIRECTORY/PROJECT/best_recipe.json)")
    p.add_argument("--workers", type=int, default=0,
                   help="run a distributed search: a chief oracle and N local worker processes on 127.0.0.1")
    p.add_argument("--timeout", type=float, default=None, help="with --workers: stop everything after S seconds")
    p.add_argument("--threads-per-worker", type=int, default=None,
                   help="with --workers: TensorFlow threads of each process (default: TensorFlow's choice)")
    p.add_argument("--quiet", action="store_true", help="no per-trial tables or per-epoch lines")
    add_data_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from keras_effcnn import tuning

    if args.workers:
        return _run_distributed(args)
    tuner = _tuner(args, overwrite=args.overwrite)
    role = tuning.tuner_role()
    tuner.search(data_dir=args.data_dir, subset=args.subset, source=args.source, verbose=0 if args.quiet else 2)
    if role == "worker":
        # The chief owns the results; it (or the launcher) reports them.
        print(f"worker {tuner.tuner_id} finished: trained trials {sorted(tuner.trained_trials)}")
        return 0
    return _report(tuner, args)


def _tuner(args: argparse.Namespace, overwrite: bool):
    from keras_effcnn import recipes, tuning

    recipe = recipes.resolve(args.recipe)
    if args.epochs is not None:
        recipe = recipe.replace(epochs=args.epochs)
    hypermodel = tuning.RecipeHyperModel(recipe, budget=args.budget, space=args.space,
                                         validation_split=args.validation_split)
    return tuning.make_tuner(hypermodel, args.tuner, max_trials=args.max_trials, directory=args.directory,
                             project_name=args.project_name, overwrite=overwrite, seed=args.seed)


def _report(tuner, args: argparse.Namespace) -> int:
    summary = tuner.summary()
    print(summary.format())
    (Path(tuner.project_dir) / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    path = tuner.write_best_recipe(args.out)
    if path is None:
        print("no trial completed: nothing to write", file=sys.stderr)
        return 1
    print(f"best recipe: {path}  (train it with: keras-effcnn train {path})")
    return 0


def _run_distributed(args: argparse.Namespace) -> int:
    from keras_effcnn import tuning_launcher

    if args.workers < 1:
        raise ValueError(f"--workers={args.workers} is not allowed: give a number of workers >= 1")
    project = Path(args.directory) / (args.project_name or _default_project(args))
    if args.overwrite and project.exists():
        # Done once here: processes that overwrite on their own would delete each other's trials.
        shutil.rmtree(project)
    command = [sys.executable, "-m", "keras_effcnn.cli", "tune", *_child_flags(args)]
    port = tuning_launcher.free_port()
    print(f"distributed search: a chief and {args.workers} workers on 127.0.0.1:{port}; logs in {project / 'logs'}",
          flush=True)
    result = tuning_launcher.run_distributed(command, args.workers, port=port, timeout=args.timeout,
                                             log_dir=project / "logs", threads_per_process=args.threads_per_worker)
    for tid, code in result.returncodes.items():
        print(f"{tid}: exit code {code}  (log: {result.logs[tid]})")
    if not result.ok:
        reason = "timed out" if result.timed_out else "a process failed"
        print(f"distributed search {reason}; chief log tail:\n{result.log_tail('chief')}", file=sys.stderr)
        return 1
    # The chief's oracle saved every trial: reload the project here and report.
    return _report(_tuner(args, overwrite=False), args)


def _default_project(args: argparse.Namespace) -> str:
    from keras_effcnn import recipes

    return f"{recipes.resolve(args.recipe).name}-{args.tuner}"


def _child_flags(args: argparse.Namespace) -> list[str]:
    """The command line of one chief or worker: this one without the launcher's own flags."""
    flags = [args.recipe, "--tuner", args.tuner, "--max-trials", str(args.max_trials),
             "--directory", str(args.directory), "--project-name", args.project_name or _default_project(args),
             "--source", args.source]
    for name in ("budget", "epochs", "subset", "validation_split", "space", "seed", "data_dir", "out"):
        value = getattr(args, name)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    if args.quiet:
        flags.append("--quiet")
    return flags

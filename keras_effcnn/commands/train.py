"""``keras-effcnn train RECIPE``: train a recipe, evaluate its final epoch, save everything.

Runs are resumable: checkpoints go to ``OUT/checkpoints`` every
``--save-every-steps`` batches and at every epoch end, and the same command
started again continues from the newest readable one. With op determinism on
(always; it costs no measurable time here, see docs/reliability.md) and the
epoch-pure data pipeline, a killed and resumed run ends bit-identical to an
uninterrupted one on the same machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from keras_effcnn.commands import add_data_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a recipe and save model, history, curves and results",
                              description="Train a recipe (a registered name or a recipe .json file). Writes "
                              "model.keras, model.weights.h5, history.json, results.json and curves.png to --out. "
                              "Resumable: run the same command again after an interruption.")
    p.add_argument("recipe", help="recipe name (e.g. mnist_1500, cifar10_140k) or a recipe .json file")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument("--subset", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/RECIPE-seedS); a folder with checkpoints is resumed")
    p.add_argument("--save-every-steps", type=_positive_int, default=100,
                   help="checkpoint every N batches as well as at every epoch end (default: 100)")
    p.add_argument("--export", choices=("none", "float", "int8"), default="none",
                   help="also export a .tflite file after training")
    p.add_argument("--track-test", action="store_true",
                   help="record test accuracy after every epoch (time-to-accuracy report; never used for selection)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    parallel = p.add_argument_group("data-parallel training (docs/backends.md)")
    parallel.add_argument("--devices", type=_positive_int, default=None,
                          help="devices per process (tf.distribute.MirroredStrategy on TensorFlow, "
                          "keras.distribution.DataParallel on JAX); a CPU-only host is split into this many")
    parallel.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                          help="multi-process training (JAX backend): address of process 0")
    parallel.add_argument("--num-processes", type=_positive_int, default=None, help="processes taking part")
    parallel.add_argument("--process-id", type=int, default=None, help="this process's index, 0 writes the outputs")
    add_data_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from keras_effcnn import distribute, provenance, recipes
    from keras_effcnn.determinism import set_determinism
    from keras_effcnn.plots import plot_history

    engine = None  # created first: it may split the CPU into devices before the backend starts
    if args.devices or args.coordinator or args.num_processes:
        engine = distribute.data_parallel(args.devices, coordinator=args.coordinator,
                                          num_processes=args.num_processes, process_id=args.process_id)
    recipe = recipes.resolve(args.recipe)
    changes = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed), ("batch_size", args.batch_size))
               if v is not None}
    recipe = recipe.replace(**changes)
    out = Path(args.out or f"runs/{recipe.name}-seed{recipe.seed}")
    _check_same_run(out, recipe)
    out.mkdir(parents=True, exist_ok=True)
    recipe.to_json(out / "recipe.json")

    commit = provenance.git_commit()  # the code the run starts with (HEAD may move while it trains)
    set_determinism(recipe.seed)
    with distribute.scope_of(engine):
        model = recipes.build(recipe)
    result = recipes.fit(model, args.data_dir, subset=args.subset, source=args.source,
                         verbose=0 if args.quiet else "auto", track_test=args.track_test, out=out,
                         save_every_steps=args.save_every_steps, distribution=engine)
    if engine is not None and not engine.is_chief:
        return 0  # process 0 writes the model and results
    model.save(out / "model.keras")
    model.save_weights(out / "model.weights.h5")
    (out / "history.json").write_text(json.dumps(result.history, indent=1) + "\n")
    summary = result.results_record(" ".join(["keras-effcnn", "train", args.recipe] + _flags(args)), commit)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_history(result.history, out / "curves.png", title=f"{recipe.name} (seed {recipe.seed})")
    resumed = "" if result.resumed_from is None else f", resumed from {Path(result.resumed_from).name}"
    print(f"{recipe.name}: final-epoch test accuracy {result.test_accuracy:.4f} ({result.params['trainable']:,} "
          f"params, {result.macs:,} MACs, {result.wall_time_s:.0f} s wall, "
          f"{result.cpu_time_s:.0f} CPU-s{resumed}) -> {out}")

    if args.export != "none":
        from keras_effcnn import data, export

        quantize = None if args.export == "float" else "int8"
        rep = data.representative_images(recipe.dataset, args.data_dir) if quantize else None
        path = out / f"model{'' if quantize is None else '_int8'}.tflite"
        report = export.to_tflite(model, path, quantize=quantize, representative_data=rep,
                                  labels=data.DATASETS[recipe.dataset].label_names)
        print(f"exported {path} ({report.size_bytes:,} bytes)")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text}")
    return value


def _check_same_run(out: Path, recipe) -> None:
    """Refuses to resume checkpoints in ``out`` that another recipe wrote (more epochs are allowed)."""
    from keras_effcnn.callbacks.checkpoint import list_checkpoints

    saved = out / "recipe.json"
    if not (saved.exists() and list_checkpoints(out / "checkpoints")):
        return
    # Both as JSON, so that tuples and lists compare equal.
    before, now = json.loads(saved.read_text()), json.loads(recipe.to_json())
    changed = sorted(k for k in now if k != "epochs" and now[k] != before.get(k))
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"{out} holds checkpoints of a run with a different recipe ({details}); run the original "
                         f"command to resume it, or pass another --out (or delete {out / 'checkpoints'}) to start over")


def _flags(args: argparse.Namespace) -> list[str]:
    flags = []
    for name in ("epochs", "seed", "batch_size", "subset", "data_dir", "out", "devices", "num_processes"):
        value = getattr(args, name, None)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags + (["--track-test"] if args.track_test else [])


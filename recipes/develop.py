"""Development runs: train a recipe variant on a validation split, never touching the test set.

Choices between recipe variants (epochs, learning rate, architecture options) are
made here, on images held out of the training set; the chosen recipe is then trained
on the full training set and only its final epoch is reported on test (by
``keras-effcnn train`` or ``benchmarks/time_to_accuracy.py``).

Each run writes ``recipes/results/development/<tag>.json`` with the recipe, the
per-epoch validation accuracy and training seconds (wall and process CPU), the
command, the commit and the machine load, so the choice can be audited later.

Usage::

    nohup python recipes/develop.py cifar10_140k --tag cifar_fast_e15 --set epochs=15 \\
        --data-dir ../shared/data > runs/dev.log 2>&1 &

``--set key=value`` changes a recipe field (JSON values: ``--set model_options='{"blurpool": false}'``).
``--validation-images`` (default 5,000) sets how many training images are held out.
``--out DIR`` checkpoints every epoch there; the same command started again resumes
a killed run (long runs that may outlive a session).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import throughput  # noqa: E402  (machine facts, shared with the benchmarks)

from keras_effcnn import data, provenance, recipes  # noqa: E402


class EpochClock(keras.callbacks.Callback):
    """Cumulative training wall and process CPU seconds at each epoch end, and Keras' validation accuracy.

    Time runs to the last batch's end: Keras' validation and the epoch-end callbacks
    (e.g. PreciseBN's pass) come after it and are not counted. Resumable through
    ``fit(out=...)`` (``get_state``/``set_state``); an epoch killed mid-way is not counted.
    """

    def __init__(self):
        super().__init__()
        self.records: list[dict] = []
        self._wall = self._cpu = 0.0

    def get_state(self) -> dict:
        return {"records": [dict(r) for r in self.records], "wall": self._wall, "cpu": self._cpu}

    def set_state(self, state: dict) -> None:
        self.records = [dict(r) for r in state["records"]]
        self._wall, self._cpu = float(state["wall"]), float(state["cpu"])

    def on_epoch_begin(self, epoch, logs=None):
        self._w0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, batch, logs=None):
        self._w1, self._c1 = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        # The last batch's end marks the end of training; Keras validates after it.
        self._wall += self._w1 - self._w0
        self._cpu += self._c1 - self._c0
        self.records.append({"epoch": epoch + 1, "train_wall_s": round(self._wall, 2),
                             "train_cpu_s": round(self._cpu, 2),
                             "val_accuracy": float((logs or {}).get("val_accuracy", float("nan")))})


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a registered recipe name or a recipe .json file")
    parser.add_argument("--tag", required=True, help="name of the result file in recipes/results/development/")
    parser.add_argument("--set", dest="changes", action="append", default=[], metavar="KEY=VALUE",
                        help="change a recipe field (value parsed as JSON when it can be)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation-images", type=int, default=5000)
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_EFFCNN_DATA_DIR"))
    parser.add_argument("--results", default=str(HERE / "results" / "development"))
    parser.add_argument("--verbose", type=int, default=2)
    parser.add_argument("--save", default=None, metavar="PATH",
                        help="also save the final model (.keras), e.g. as a teacher trained on this split "
                             "(a teacher for seed k must be trained with seed k: the split follows the seed)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="epoch checkpoints of this run; an existing one is resumed (e.g. runs/develop/<tag>)")
    args = parser.parse_args(argv)

    changes = {}
    for item in args.changes:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE; got {item!r}")
        changes[key] = parse_value(value)
    base = recipes.resolve(args.recipe)
    train_size = data.DATASETS[base.dataset].train_size
    if not 0 < args.validation_images < train_size:
        parser.error(f"--validation-images must be in (0, {train_size}); got {args.validation_images}")
    recipe = base.replace(seed=args.seed, validation_split=args.validation_images / train_size, **changes)

    model = recipes.build(recipe)
    clock = EpochClock()
    load_start = os.getloadavg()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = recipes.fit(model, args.data_dir, callbacks=[clock], verbose=args.verbose, evaluate_test=False,
                         out=args.out, save_every_steps=None)
    # The final model (after end-of-training callbacks such as SWA or PreciseBN, which Keras'
    # per-epoch validation does not see), on the same held-out images.
    splits = data.load(recipe.dataset, args.data_dir, batch_size=recipe.batch_size,
                       validation_split=recipe.validation_split, seed=recipe.seed)
    final_val = float(model.evaluate(splits.val, return_dict=True, verbose=0)["accuracy"])
    record = {
        "command": "python recipes/develop.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": provenance.git_commit(ROOT),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": throughput.machine(),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "recipe": recipe.to_dict(),
        "base_recipe": base.name, "changes": changes,
        "validation_images": args.validation_images,
        "final_val_accuracy": final_val,
        "train_wall_s": clock.records[-1]["train_wall_s"], "train_cpu_s": clock.records[-1]["train_cpu_s"],
        "process_wall_s": round(time.perf_counter() - wall0, 1), "process_cpu_s": round(time.process_time() - cpu0, 1),
        "params": result.params, "macs": result.macs, "resumed_from": result.resumed_from,
        "epochs": clock.records,
        "note": "validation split of the training set only; the test set was not evaluated",
    }
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        model.save(args.save)
        record["saved_model"] = args.save
    out = Path(args.results) / f"{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.tag}: final val accuracy {record['final_val_accuracy']:.4f} after {record['train_wall_s']:.0f} s "
          f"training ({record['train_cpu_s']:.0f} CPU-s) -> {out}", flush=True)
    return record


if __name__ == "__main__":
    main()

"""Search the MNIST recipe under the paper's 1,500-parameter budget, then train the best configuration.

The search draws widths, squeeze-and-excitation, the peak learning rate, label
smoothing and Mixup around ``mnist_1500``; a configuration whose model has more
than 1,500 trainable parameters is rejected before it trains. Each trial is
scored by its final-epoch accuracy on a validation split of the training set;
the test set is only touched once, by the final training of the best recipe.

Run it (re-running continues the same search)::

    python examples/tune_search.py --data-dir ../shared/data

``KERAS_EFFCNN_SMALL=1`` uses tiny settings (2 trials of 1 epoch on 1,000
images) for a smoke test. The same search from the shell::

    keras-effcnn tune mnist_1500 --budget 1500 --max-trials 20 --epochs 5 --subset 20000 \\
        --space width_multiplier,se_ratio,learning_rate,label_smoothing,mixup_alpha
"""

from __future__ import annotations

import argparse
import os

from keras_effcnn import recipes, tuning

SMALL = os.environ.get("KERAS_EFFCNN_SMALL") == "1"
SETTINGS = dict(max_trials=2, epochs=1, subset=1_000) if SMALL else dict(max_trials=20, epochs=5, subset=20_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_EFFCNN_DATA_DIR"),
                        help="folder with mnist.npz (default: $KERAS_EFFCNN_DATA_DIR)")
    parser.add_argument("--directory", default="tuning", help="folder of tuning projects")
    args = parser.parse_args()

    base = recipes.get_recipe("mnist_1500").replace(epochs=SETTINGS["epochs"])
    hypermodel = tuning.RecipeHyperModel(
        base, budget=1_500, space=["width_multiplier", "se_ratio", "learning_rate", "label_smoothing", "mixup_alpha"])
    tuner = tuning.make_tuner(hypermodel, "random", max_trials=SETTINGS["max_trials"], directory=args.directory,
                              project_name="example-mnist-1500" + ("-small" if SMALL else ""))
    tuner.search(data_dir=args.data_dir, subset=SETTINGS["subset"], verbose=0 if SMALL else 2)

    print(tuner.summary().format())
    path = tuner.write_best_recipe()
    print(f"best recipe: {path}")

    # The best configuration, trained once and evaluated on the test set at its final epoch.
    model = recipes.build(path)
    result = recipes.fit(model, args.data_dir, subset=SETTINGS["subset"], verbose=0 if SMALL else 2)
    print(f"final-epoch test accuracy {result.test_accuracy:.4f} "
          f"({result.params['trainable']:,} trainable parameters)")


if __name__ == "__main__":
    main()

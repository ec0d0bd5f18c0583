"""``keras-effcnn evaluate``: test-set accuracy of a ``.keras`` model, a recipe's weights or a ``.tflite`` file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from keras_effcnn import presets
from keras_effcnn.commands import WEIGHTS_HELP, add_data_args, guess_dataset, load_model


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="accuracy on the real test set",
                              description="Evaluate a saved .keras model, a recipe with shipped or given weights, "
                              "or (with --tflite) an exported .tflite file run by the LiteRT interpreter.")
    p.add_argument("model", nargs="?", default=None,
                   help="a .keras file, or a recipe name / .json (then --weights is required)")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--tflite", default=None, help="evaluate this .tflite file with ai_edge_litert")
    p.add_argument("--dataset", default=None, choices=sorted(presets.DATASETS),
                   help="dataset (default: the recipe's, or guessed from the input shape)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    add_data_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from keras_effcnn import data

    if args.model is None and args.tflite is None:
        raise ValueError("give a model (.keras file or recipe name) or --tflite FILE")
    keras_model, dataset = load_model(args.model, args.weights) if args.model else (None, None)
    dataset = args.dataset or dataset or guess_dataset(_input_shape(keras_model, args.tflite))
    _, (x_test, y_test) = data.load_arrays(dataset, args.data_dir, source=args.source)
    images = x_test.astype("float32") / 255.0
    metrics: dict = {"dataset": dataset, "test_images": int(len(y_test))}
    if keras_model is not None:
        probs = keras_model.predict(images, batch_size=500, verbose=0)
        metrics["keras_accuracy"] = float((probs.argmax(-1) == y_test).mean())
        print(f"Keras model: test accuracy {metrics['keras_accuracy']:.4f} on {len(y_test)} {dataset} test images")
    if args.tflite:
        from keras_effcnn import export

        tfl = export.evaluate_tflite(args.tflite, images, y_test, keras_model=keras_model)
        metrics["tflite"] = tfl
        print(f"TFLite {args.tflite}: test accuracy {tfl['accuracy']:.4f}"
              + (f", top-1 agreement with Keras {tfl['agreement']:.4f}" if tfl.get("agreement") is not None else "")
              + f", {tfl['latency_ms']:.3f} ms/image (1 thread), {tfl['size_bytes']:,} bytes")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def _input_shape(model, tflite_path) -> tuple:
    if model is not None:
        return tuple(model.input_shape[1:])
    from keras_effcnn import export

    return tuple(export.input_shape(tflite_path)[1:])

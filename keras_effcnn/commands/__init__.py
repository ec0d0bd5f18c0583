"""Sub-commands of the ``keras-effcnn`` CLI, one module each (``add_parser`` + ``run``)."""

from __future__ import annotations

import argparse


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--source``, shared by every command that reads a dataset."""
    parser.add_argument("--data-dir", default=None,
                        help="folder with mnist.npz / cifar10.npz (default: $KERAS_EFFCNN_DATA_DIR, else download)")
    parser.add_argument("--source", default="auto", choices=("auto", "local", "tfds", "keras"),
                        help="where to read the dataset from (default: auto)")

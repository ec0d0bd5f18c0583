"""Training-time callbacks: per-batch cyclical LR, LR range test, SWA, resumable checkpoints."""

from keras_effcnn.callbacks.checkpoint import CheckpointError, ResumableCheckpoint, resume_callbacks
from keras_effcnn.callbacks.cyclical import CyclicalLR
from keras_effcnn.callbacks.lr_finder import LRFinder, LRFinderResult, find_lr
from keras_effcnn.callbacks.swa import SWA, update_bn
from keras_effcnn.callbacks.timeline import TestTimeline

__all__ = [
    "CheckpointError",
    "CyclicalLR",
    "LRFinder",
    "LRFinderResult",
    "ResumableCheckpoint",
    "SWA",
    "TestTimeline",
    "find_lr",
    "resume_callbacks",
    "update_bn",
]

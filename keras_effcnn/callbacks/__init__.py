"""Training-time callbacks: per-batch cyclical LR, LR range test, SWA, precise BN statistics, resumable checkpoints."""

from keras_effcnn.callbacks.checkpoint import CheckpointError, ResumableCheckpoint, resume_callbacks
from keras_effcnn.callbacks.cyclical import CyclicalLR
from keras_effcnn.callbacks.lr_finder import LRFinder, LRFinderResult, find_lr
from keras_effcnn.callbacks.precise_bn import PreciseBN, update_bn
from keras_effcnn.callbacks.swa import SWA
from keras_effcnn.callbacks.timeline import TestTimeline

__all__ = [
    "CheckpointError",
    "CyclicalLR",
    "LRFinder",
    "LRFinderResult",
    "PreciseBN",
    "ResumableCheckpoint",
    "SWA",
    "TestTimeline",
    "find_lr",
    "resume_callbacks",
    "update_bn",
]

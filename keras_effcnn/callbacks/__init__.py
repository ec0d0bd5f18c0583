"""Training-time callbacks: per-batch cyclical LR, LR range test, SWA."""

from keras_effcnn.callbacks.cyclical import CyclicalLR
from keras_effcnn.callbacks.lr_finder import LRFinder, LRFinderResult, find_lr
from keras_effcnn.callbacks.swa import SWA, update_bn

__all__ = ["CyclicalLR", "LRFinder", "LRFinderResult", "find_lr", "SWA", "update_bn"]

"""Checks what works on the PyTorch backend: zoo models and layers build, predict and train with a
plain ``fit``, and a recipe model trains with a plain ``fit`` on integer labels.

Not part of CI (PyPI's torch pulls CUDA wheels). Run in a throwaway venv::

    python3 -m venv /tmp/torchvenv && . /tmp/torchvenv/bin/activate
    pip install torch==2.13.0 keras numpy && pip install --no-deps -e .
    pip install tensorflow-cpu   # only for the recipe part (keras_effcnn.data builds tf.data pipelines)
    python examples/torch_backend_check.py
"""
import os, sys, numpy as np
os.environ["KERAS_BACKEND"] = "torch"
import keras, keras_effcnn
from keras_effcnn import models, layers
print("backend", keras.backend.backend(), "keras", keras.__version__)
ok = {}
for name in models.list_models():
    m = models.build(name)
    shape = m.input_shape[1:]
    x = np.random.rand(8, *shape).astype("float32"); y = np.random.randint(0, 10, 8)
    p = m.predict(x, verbose=0)
    m.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    h = m.fit(x, y, epochs=1, batch_size=4, verbose=0)
    ok[name] = (p.shape, float(h.history["loss"][0]))
    print(name, ok[name], flush=True)
# layers alone
x = np.random.rand(2, 8, 8, 4).astype("float32")
for lay in (layers.BlurPool2D(3, 2), layers.SqueezeExcite(0.25), layers.DepthwiseSeparableBlock(6, 3), layers.ConvBNAct(6, 3)):
    print(type(lay).__name__, tuple(lay(x).shape))
# a recipe model with plain fit on integer labels
from keras_effcnn import recipes
try:
    m = recipes.mnist_1500()
    x = np.random.rand(16, 28, 28, 1).astype("float32"); y = np.random.randint(0, 10, 16)
    m.fit(x, y, epochs=1, batch_size=8, verbose=0); print("recipe model plain fit OK")
except Exception as e:
    print("recipe model:", type(e).__name__, str(e)[:300])

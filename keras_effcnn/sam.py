"""Sharpness-Aware Minimization (Foret et al., ICLR 2021, arXiv 2010.01412) and
its adaptive variant ASAM (Kwon et al., ICML 2021, arXiv 2102.11600).

SAM minimizes the loss in a neighbourhood of the weights: each step it moves to
the (first-order) worst point ``w + eps`` within an L2 ball of radius ``rho``,
takes the gradient there, and applies it at ``w`` with the base optimizer::

    g     = grad L(w)
    eps   = rho * g / ||g||                  (SAM)
    eps   = rho * T^2 g / ||T g||, T = |w|   (ASAM, adaptive=True)
    g'    = grad L(w + eps)
    w    <- optimizer(w, g')

Implemented as a ``keras.Model`` subclass overriding ``train_step`` (TensorFlow
backend), so it works with any Keras optimizer, learning-rate schedule,
compiled loss and metrics, sample weights, mixed precision and ``fit``.
"""

from __future__ import annotations

import keras

_TRAIN_ONLY_TF = (
    "SAMModel.train_step is implemented for the TensorFlow backend only; the active "
    "Keras backend is {!r}. Set KERAS_BACKEND=tensorflow to train with SAM (inference, "
    "saving and loading work on every backend)."
)


@keras.saving.register_keras_serializable(package="keras_effcnn")
class SAMModel(keras.Model):
    """A functional model trained with SAM / ASAM.

    Build it like a functional model, ``SAMModel(inputs=..., outputs=..., rho=0.05)``,
    or wrap an existing model with :meth:`from_model` (same layers, so the same
    weights). Compile and fit as usual; every training step costs two forward and
    backward passes.

    Details of the step:

    * The loss, metrics and progress bar report the unperturbed forward pass at ``w``.
    * BatchNorm moving statistics (and any other non-trainable float state) are
      updated by the first forward pass only; the pass at ``w + eps`` runs in
      training mode (batch statistics) but its updates are rolled back.
    * The weights are restored to exact copies of ``w`` (not ``w + eps - eps``)
      before the optimizer applies ``g'``.
    * m-sharpness (``num_splits = m > 1``): the batch is split into ``m`` nearly
      equal parts; each part gets its own ``eps`` from its own gradient and
      its own ``g'``; the ``g'`` are averaged with weights ``size_i / batch``
      (so ``rho = 0`` gives exactly the full-batch gradient). BatchNorm statistics
      then receive one update per part (its first pass).
    * Under mixed precision the gradients of the scaled loss are used; ``eps`` is
      invariant to the scale, and ``LossScaleOptimizer.apply`` unscales ``g'``.

    Args:
        *args, **kwargs: as for a functional ``keras.Model`` (``inputs``, ``outputs``, ``name``).
        rho: neighbourhood radius, ``>= 0`` (``rho = 0`` is plain training at twice
            the cost). Foret et al. use 0.05 (0.1-0.2 on CIFAR with longer
            training); ASAM's authors suggest about 0.5 with ``adaptive=True``.
        adaptive: use ASAM's scale-invariant neighbourhood ``T = |w|``.
        num_splits: m-sharpness: number of batch parts with separate
            perturbations, ``>= 1``; the batch must have at least that many samples.
        eps: added to the norm in the denominator, ``> 0``.

    Example:
        >>> inputs = keras.Input((8,))
        >>> outputs = keras.layers.Dense(3, activation="softmax")(inputs)
        >>> model = SAMModel(inputs=inputs, outputs=outputs, rho=0.05)
        >>> model.compile(optimizer="sgd", loss="categorical_crossentropy", jit_compile=False)
    """

    def __init__(self, *args, rho: float = 0.05, adaptive: bool = False, num_splits: int = 1, eps: float = 1e-12, **kwargs):
        if not rho >= 0:
            raise ValueError(f"`rho` must be >= 0; received rho={rho!r}.")
        if not (num_splits >= 1 and float(num_splits).is_integer()):
            raise ValueError(f"`num_splits` must be an integer >= 1; received num_splits={num_splits!r}.")
        if not eps > 0:
            raise ValueError(f"`eps` must be > 0; received eps={eps!r}.")
        super().__init__(*args, **kwargs)
        self.rho = float(rho)
        self.adaptive = bool(adaptive)
        self.num_splits = int(num_splits)
        self.eps = float(eps)

    @classmethod
    def from_model(
        cls,
        model: keras.Model,
        rho: float = 0.05,
        adaptive: bool = False,
        num_splits: int = 1,
        eps: float = 1e-12,
        input_shape: tuple | None = None,
        name: str | None = None,
    ) -> "SAMModel":
        """Wrap an existing model for SAM training.

        A functional or built ``Sequential`` model is rebuilt as a ``SAMModel`` over
        the same graph, so it shares the layers (and weights) and saves as a plain
        ``SAMModel``. A subclassed model is called on a new ``keras.Input`` of
        ``input_shape`` (without the batch axis) and becomes one layer of the
        ``SAMModel``; it must then be serializable itself to be saved.
        The result is not compiled.

        Args:
            model: the model to wrap.
            rho, adaptive, num_splits, eps: see :class:`SAMModel`.
            input_shape: input shape for subclassed models.
            name: name of the new model (default: ``model.name``).

        Example:
            >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
            >>> sam = SAMModel.from_model(base, rho=0.1)
            >>> sam.layers[-1] is base.layers[-1]
            True
        """
        kwargs = dict(rho=rho, adaptive=adaptive, num_splits=num_splits, eps=eps, name=name or model.name)
        inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
        if inputs and outputs:
            def unpack(tensors):
                return tensors[0] if len(tensors) == 1 else tensors

            return cls(inputs=unpack(inputs), outputs=unpack(outputs), **kwargs)
        if input_shape is None:
            raise ValueError(
                f"`input_shape` is required to wrap the subclassed model {model.name!r}, which "
                "has no symbolic inputs; received input_shape=None."
            )
        inputs = keras.Input(shape=tuple(input_shape))
        return cls(inputs=inputs, outputs=model(inputs), **kwargs)

    # -- the SAM step ---------------------------------------------------------------
    def _perturbation(self, grads, variables):
        """``eps`` for each variable (None where the gradient is None)."""
        from keras import ops

        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if self.adaptive:
            scaled = [ops.abs(v.value) * ops.cast(g, v.dtype) for g, v in pairs]
        else:
            scaled = [ops.cast(g, v.dtype) for g, v in pairs]
        # One stacked reduction instead of a serial chain of scalar additions.
        norm = ops.sqrt(ops.sum(ops.stack([ops.sum(ops.square(t)) for t in scaled])))
        factor = self.rho / (norm + self.eps)
        eps = []
        for g, v in zip(grads, variables):
            if g is None:
                eps.append(None)
                continue
            e = ops.cast(g, v.dtype) * factor
            eps.append(ops.square(v.value) * e if self.adaptive else e)
        return eps

    def _split(self, data):
        """``num_splits`` nearly equal parts of the batch and their batch fractions."""
        import tensorflow as tf

        if self.num_splits == 1:
            return [data], [None]
        k = self.num_splits
        # tf.nest keeps None leaves (absent y or sample_weight) in place.
        flat = tf.nest.flatten(data)
        n = tf.shape(next(t for t in flat if t is not None))[0]
        tf.debugging.assert_greater_equal(
            n, k, message=f"SAMModel: the batch has fewer samples than num_splits={k}"
        )
        sizes = n // k + tf.cast(tf.range(k) < n % k, n.dtype)
        fractions = [tf.cast(sizes[i], "float32") / tf.cast(n, "float32") for i in range(k)]
        pieces = [None if t is None else tf.split(t, sizes, num=k, axis=0) for t in flat]
        parts = [tf.nest.pack_sequence_as(data, [p if p is None else p[i] for p in pieces]) for i in range(k)]
        return parts, fractions

    def _loss_and_grads(self, x, y, sample_weight, variables):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            scaled = self.optimizer.scale_loss(loss)
        return y_pred, loss, tape.gradient(scaled, variables)

    def train_step(self, *args):
        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(_TRAIN_ONLY_TF.format(keras.backend.backend()))
        import tensorflow as tf

        (data,) = args
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        # Non-trainable float state (BatchNorm moving statistics) touched by a forward pass.
        state = [v for v in self.non_trainable_variables if v.dtype.startswith(("float", "bfloat"))]

        parts, fractions = self._split((x, y, sample_weight))
        total_grads, preds, loss = None, [], 0.0
        for (xs, ys, ws), frac in zip(parts, fractions):
            y_pred, part_loss, grads = self._loss_and_grads(xs, ys, ws, variables)
            eps = self._perturbation(grads, variables)
            # Exact copies, taken after the first pass's BN update; TF's automatic
            # control dependencies order these reads before the assignments below.
            saved_w = [tf.identity(v.value) for v in variables]
            saved_state = [tf.identity(v.value) for v in state]
            for v, e in zip(variables, eps):
                if e is not None:
                    v.assign_add(e)
            _, _, sharp_grads = self._loss_and_grads(xs, ys, ws, variables)
            for v, w in zip(variables, saved_w):
                v.assign(w)
            for v, s in zip(state, saved_state):
                v.assign(s)
            if frac is None:
                total_grads, loss = sharp_grads, part_loss
            else:
                weighted = [None if g is None else g * tf.cast(frac, g.dtype) for g in sharp_grads]
                total_grads = weighted if total_grads is None else [
                    a if b is None else (b if a is None else a + b) for a, b in zip(total_grads, weighted)
                ]
                loss = loss + part_loss * tf.cast(frac, part_loss.dtype)
            preds.append(y_pred)

        if variables:
            self.optimizer.apply(total_grads, variables)
        # The same bookkeeping as Keras' own train_step: the "loss" tracker is
        # weighted by the batch size.
        batch_size = tf.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]
        self._loss_tracker.update_state(loss, sample_weight=batch_size)
        y_pred = preds[0] if len(preds) == 1 else keras.tree.map_structure(lambda *p: tf.concat(p, 0), *preds)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(rho=self.rho, adaptive=self.adaptive, num_splits=self.num_splits, eps=self.eps)
        return config


__all__ = ["SAMModel"]

"""Sharpness-Aware Minimization (Foret et al., ICLR 2021, arXiv 2010.01412) and
its adaptive variant ASAM (Kwon et al., ICML 2021, arXiv 2102.11600).

SAM minimizes the loss in a neighbourhood of the weights: each step it moves to
the (first-order) worst point ``w + eps`` within an L2 ball of radius ``rho``,
takes the gradient there, and applies it at ``w`` with the base optimizer::

    g     = grad L(w)
    eps   = rho * g / ||g||                  (SAM)
    eps   = rho * T^2 g / ||T g||            (ASAM, adaptive=True)
    g'    = grad L(w + eps)
    w    <- optimizer(w, g')

ASAM's ``T`` follows Kwon et al.'s reference code (github.com/SamsungLabs/ASAM,
``ascent_step``): ``T = |w| + eta`` (``eta = 0.01``) for every parameter that
PyTorch names a ``weight`` - kernels and the scale ``gamma`` of normalization
layers - and ``T = 1`` for biases and normalization offsets ``beta``. Without
``eta`` a zero-initialised parameter would never be perturbed.

Implemented as a ``keras.Model`` subclass overriding ``train_step`` for the
TensorFlow backend (stateful, with ``tf.GradientTape``) and for the JAX backend
(stateless, with ``jax.value_and_grad`` and ``optimizer.stateless_apply`` as
Keras' own JAX trainer), so it works with any Keras optimizer, learning-rate
schedule, compiled loss and metrics, sample weights, mixed precision and ``fit``.

Under data parallelism (``keras_effcnn.distribute``) every replica uses the
same, *global* ``eps`` computed from the all-reduced gradient of the whole
global batch, so a data-parallel step equals the single-device step on that
batch. Per-replica perturbations (m-sharpness with ``m`` = the replica batch)
are ``num_splits`` = number of replicas.
"""

from __future__ import annotations

import keras

_TRAIN_BACKENDS = ("tensorflow", "jax")
_UNSUPPORTED_BACKEND = (
    "SAMModel.train_step is implemented for the TensorFlow and JAX backends; the active "
    "Keras backend is {!r}. Set KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow to train with "
    "SAM (inference, saving and loading work on every backend)."
)
# Parameters that get T = 1 in ASAM: what PyTorch names a `bias` (Keras: `bias`, and the
# normalization offset `beta`). Everything else - kernels, normalization scales - gets |w| + eta.
_OFFSET_NAMES = ("bias", "beta")


def _is_offset(variable) -> bool:
    return variable.name.rsplit("/", 1)[-1].endswith(_OFFSET_NAMES)


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
        adaptive: use ASAM's scale-invariant neighbourhood (``T = |w| + eta`` for
            kernels and normalization scales, ``T = 1`` for biases and offsets).
        eta: ASAM's ``eta``, ``>= 0`` (Kwon et al. use 0.01); ignored unless
            ``adaptive``.
        num_splits: m-sharpness: number of batch parts with separate
            perturbations, ``>= 1``; the batch must have at least that many samples.
        eps: added to the norm in the denominator, ``> 0``.

    Example:
        >>> inputs = keras.Input((8,))
        >>> outputs = keras.layers.Dense(3, activation="softmax")(inputs)
        >>> model = SAMModel(inputs=inputs, outputs=outputs, rho=0.05)
        >>> model.compile(optimizer="sgd", loss="categorical_crossentropy", jit_compile=False)
    """

    def __init__(self, *args, rho: float = 0.05, adaptive: bool = False, num_splits: int = 1, eps: float = 1e-12,
                 eta: float = 0.01, **kwargs):
        if not rho >= 0:
            raise ValueError(f"`rho` must be >= 0; received rho={rho!r}.")
        if not (num_splits >= 1 and float(num_splits).is_integer()):
            raise ValueError(f"`num_splits` must be an integer >= 1; received num_splits={num_splits!r}.")
        if not eps > 0:
            raise ValueError(f"`eps` must be > 0; received eps={eps!r}.")
        if not eta >= 0:
            raise ValueError(f"`eta` must be >= 0; received eta={eta!r}.")
        super().__init__(*args, **kwargs)
        self.rho = float(rho)
        self.adaptive = bool(adaptive)
        self.num_splits = int(num_splits)
        self.eps = float(eps)
        self.eta = float(eta)

    @classmethod
    def from_model(
        cls,
        model: keras.Model,
        rho: float = 0.05,
        adaptive: bool = False,
        num_splits: int = 1,
        eps: float = 1e-12,
        eta: float = 0.01,
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
            rho, adaptive, num_splits, eps, eta: see :class:`SAMModel`.
            input_shape: input shape for subclassed models.
            name: name of the new model (default: ``model.name``).

        Example:
            >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
            >>> sam = SAMModel.from_model(base, rho=0.1)
            >>> sam.layers[-1] is base.layers[-1]
            True
        """
        kwargs = dict(rho=rho, adaptive=adaptive, num_splits=num_splits, eps=eps, eta=eta, name=name or model.name)
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
    def _perturbation(self, grads, values):
        """``eps`` for each trainable variable (None where the gradient is None).

        Args:
            grads: gradients, aligned with ``self.trainable_variables``.
            values: the current values of ``self.trainable_variables`` (tensors).
        """
        from keras import ops

        scales = [
            None if not self.adaptive or _is_offset(v) else ops.abs(w) + ops.cast(self.eta, w.dtype)
            for v, w in zip(self.trainable_variables, values)
        ]
        scaled = [
            None if g is None else (ops.cast(g, w.dtype) if t is None else t * ops.cast(g, w.dtype))
            for g, w, t in zip(grads, values, scales)
        ]
        # One stacked reduction instead of a serial chain of scalar additions.
        norm = ops.sqrt(ops.sum(ops.stack([ops.sum(ops.square(t)) for t in scaled if t is not None])))
        factor = self.rho / (norm + self.eps)
        return [None if s is None else (s if t is None else t * s) * factor for s, t in zip(scaled, scales)]

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
        backend = keras.backend.backend()
        if backend not in _TRAIN_BACKENDS:
            raise NotImplementedError(_UNSUPPORTED_BACKEND.format(backend))
        if backend == "jax":
            return self._jax_train_step(*args)
        return self._tf_train_step(*args)

    def _tf_train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        # Non-trainable float state (BatchNorm moving statistics) touched by a forward pass.
        state = [v for v in self.non_trainable_variables if v.dtype.startswith(("float", "bfloat"))]

        parts, fractions = self._split((x, y, sample_weight))
        total_grads, preds, loss = None, [], 0.0
        for (xs, ys, ws), frac in zip(parts, fractions):
            y_pred, part_loss, grads = self._loss_and_grads(xs, ys, ws, variables)
            eps = self._perturbation(_all_reduce_tf(grads), [v.value for v in variables])
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
        # Under tf.distribute the compiled loss is divided by the number of replicas.
        self._loss_tracker.update_state(_unscale_tf(loss), sample_weight=batch_size)
        y_pred = preds[0] if len(preds) == 1 else keras.tree.map_structure(lambda *p: tf.concat(p, 0), *preds)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _jax_train_step(self, state, data):
        """The stateless SAM step of the JAX backend, as ``JAXTrainer.train_step``."""
        import jax

        trainable, non_trainable, optimizer_vars, metrics_vars = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)
        parts, fractions = _split_static((x, y, sample_weight), self.num_splits)
        total_grads, preds, loss = None, [], 0.0
        for (xs, ys, ws), frac in zip(parts, fractions):
            (_, (part_loss, y_pred, new_non_trainable, _)), grads = grad_fn(
                trainable, non_trainable, metrics_vars, xs, ys, ws, training=True,
                optimizer_variables=optimizer_vars,
            )
            # Under keras.distribution.DataParallel the arrays are global (sharded over the
            # devices), so `grads` already is the all-reduced gradient: the eps is global.
            eps = self._perturbation(grads, trainable)
            perturbed = [w if e is None else w + e for w, e in zip(trainable, eps)]
            # The pass at w + eps runs in training mode; its BN updates are dropped.
            _, sharp_grads = grad_fn(
                perturbed, new_non_trainable, metrics_vars, xs, ys, ws, training=True,
                optimizer_variables=optimizer_vars,
            )
            non_trainable = new_non_trainable
            if frac is None:
                total_grads, loss = sharp_grads, part_loss
            else:
                total_grads = [g * frac if t is None else t + g * frac
                               for t, g in zip(total_grads or [None] * len(sharp_grads), sharp_grads)]
                loss = loss + part_loss * frac
            preds.append(y_pred)

        trainable, optimizer_vars = self.optimizer.stateless_apply(optimizer_vars, total_grads, trainable)
        y_pred = preds[0] if len(preds) == 1 else keras.tree.map_structure(
            lambda *p: keras.ops.concatenate(p, axis=0), *preds)
        # The loss tracker (weighted by the batch size) and compiled metrics, as Keras' own step.
        logs, metrics_vars = self._update_metrics_variables(metrics_vars, loss, x, y, y_pred, sample_weight)
        return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(rho=self.rho, adaptive=self.adaptive, num_splits=self.num_splits, eps=self.eps, eta=self.eta)
        return config


def _split_static(data, k: int):
    """``k`` nearly equal parts of a batch of static size, and their batch fractions."""
    if k == 1:
        return [data], [None]
    flat = keras.tree.flatten(data)
    n = int(next(t for t in flat if t is not None).shape[0])
    if n < k:
        raise ValueError(f"SAMModel: the batch has {n} samples, fewer than num_splits={k}; use a larger "
                         "batch or a smaller num_splits.")
    sizes = [n // k + (i < n % k) for i in range(k)]
    bounds = [sum(sizes[:i]) for i in range(k + 1)]
    parts = [keras.tree.map_structure(lambda t, lo=lo, hi=hi: None if t is None else t[lo:hi], data)
             for lo, hi in zip(bounds, bounds[1:])]
    return parts, [size / n for size in sizes]


def _all_reduce_tf(grads):
    """Sums the gradients over the replicas of a ``tf.distribute`` strategy (a no-op on one)."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return grads
    present = [i for i, g in enumerate(grads) if g is not None]
    reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
    out = list(grads)
    for i, g in zip(present, reduced):
        out[i] = g
    return out


def _unscale_tf(loss):
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * tf.cast(replicas, loss.dtype)


__all__ = ["SAMModel"]

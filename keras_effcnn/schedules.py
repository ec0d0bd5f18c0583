"""Cyclical (Smith 2017) and one-cycle (Smith 2018) learning-rate schedules.

Both are ``keras.optimizers.schedules.LearningRateSchedule`` subclasses written
with ``keras.ops``, so they can be passed straight to any Keras optimizer
(``SGD(learning_rate=OneCycle(...))``), evaluated on a vector of steps, and
saved inside a ``.keras`` file.

Momentum cycling (the inverse momentum ramp of Smith 2018) is not implemented:
Keras optimizers read ``momentum`` / ``beta_1`` as Python floats that are baked
into the traced train step, so they cannot be changed per batch without
retracing.
"""

from __future__ import annotations

import math

import keras
from keras import ops

CLR_MODES = ("triangular", "triangular2", "exp_range")
ANNEAL_MODES = ("cos", "linear")


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}; received {name}={value!r}.")


@keras.saving.register_keras_serializable(package="keras_effcnn")
class CyclicalLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Cyclical learning rate of Smith, *Cyclical Learning Rates for Training
    Neural Networks* (WACV 2017, arXiv 1506.01186).

    The rate moves linearly between ``base_lr`` and ``max_lr`` and back in
    cycles of ``2 * step_size`` steps::

        cycle = floor(1 + step / (2 * step_size))
        x     = |step / step_size - 2 * cycle + 1|
        lr    = base_lr + (max_lr - base_lr) * max(0, 1 - x) * scale

    with ``scale = 1`` (``"triangular"``), ``1 / 2**(cycle - 1)``
    (``"triangular2"``, the amplitude halves every cycle) or ``gamma**step``
    (``"exp_range"``). ``step`` is the optimizer's iteration count, starting at 0.

    Args:
        base_lr: lower bound of the cycle, ``>= 0``.
        max_lr: upper bound of the cycle, ``>= base_lr``.
        step_size: half-cycle length in optimizer steps, ``>= 1`` (Smith suggests
            2-10 epochs' worth of steps).
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
        gamma: per-step amplitude decay for ``"exp_range"``, in ``(0, 1]``;
            ``gamma**step`` is computed as ``exp(step * log(gamma))`` with ``log(gamma)``
            in float64, so it stays exact to float32 rounding over long runs.
        name: optional name of the schedule.

    Example:
        >>> clr = CyclicalLearningRate(1e-3, 1e-2, step_size=4)
        >>> [round(float(clr(s)), 5) for s in (0, 2, 4, 8)]
        [0.001, 0.0055, 0.01, 0.001]
    """

    def __init__(
        self,
        base_lr: float,
        max_lr: float,
        step_size: float,
        mode: str = "triangular",
        gamma: float = 1.0,
        name: str | None = None,
    ):
        super().__init__()
        _check_choice("mode", mode, CLR_MODES)
        if not base_lr >= 0:
            raise ValueError(f"`base_lr` must be >= 0; received base_lr={base_lr!r}.")
        if not max_lr >= base_lr:
            raise ValueError(
                f"`max_lr` must be >= base_lr={base_lr!r}; received max_lr={max_lr!r}."
            )
        if not step_size >= 1:
            raise ValueError(f"`step_size` must be >= 1 step; received step_size={step_size!r}.")
        if not 0 < gamma <= 1:
            raise ValueError(f"`gamma` must be in (0, 1]; received gamma={gamma!r}.")
        self.base_lr = float(base_lr)
        self.max_lr = float(max_lr)
        self.step_size = float(step_size)
        self.mode = mode
        self.gamma = float(gamma)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        cycle = ops.floor(1.0 + step / (2.0 * self.step_size))
        x = ops.abs(step / self.step_size - 2.0 * cycle + 1.0)
        if self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = ops.power(2.0, 1.0 - cycle)
        else:
            # gamma**step in log space with log(gamma) taken in float64: float32(gamma)
            # carries a relative error of up to 6e-8 that gamma**step multiplies by `step`
            # (4e-4 after 50K steps); here the error stays at float32 rounding.
            scale = ops.exp(step * math.log(self.gamma))
        return self.base_lr + (self.max_lr - self.base_lr) * ops.maximum(0.0, 1.0 - x) * scale

    def get_config(self) -> dict:
        return {
            "base_lr": self.base_lr,
            "max_lr": self.max_lr,
            "step_size": self.step_size,
            "mode": self.mode,
            "gamma": self.gamma,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="keras_effcnn")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle learning rate of Smith, *Super-Convergence* (2018, arXiv
    1708.07120), with the semantics of PyTorch's ``OneCycleLR``.

    With ``initial_lr = max_lr / div_factor`` and
    ``min_lr = initial_lr / final_div_factor`` the rate follows consecutive
    phases, each annealed (cosine or linear) from its start to its end value:

    * two phases (default): ``initial_lr -> max_lr`` over steps
      ``[0, pct_start*total_steps - 1]``, then ``max_lr -> min_lr`` until step
      ``total_steps - 1``;
    * ``three_phase=True``: ``initial_lr -> max_lr`` until ``pct_start*total_steps - 1``,
      ``max_lr -> initial_lr`` until ``2*pct_start*total_steps - 2``, then
      ``initial_lr -> min_lr`` until ``total_steps - 1`` (fast.ai style).

    Within a phase running from ``start`` to ``end``, ``pct = (step - start) /
    (end - start)`` and the rate is ``end_lr + (start_lr - end_lr) / 2 *
    (1 + cos(pi * pct))`` (``"cos"``) or ``start_lr + pct * (end_lr - start_lr)``
    (``"linear"``). Unlike PyTorch, which raises past the last step, steps beyond
    ``total_steps - 1`` stay at ``min_lr``.

    Args:
        max_lr: peak learning rate, ``> 0``.
        total_steps: number of optimizer steps of the whole run, ``>= 1``.
        pct_start: fraction of the steps spent increasing the rate, in ``(0, 1)``
            (``(0, 0.5)`` when ``three_phase``).
        div_factor: ``initial_lr = max_lr / div_factor``, ``> 0``.
        final_div_factor: ``min_lr = initial_lr / final_div_factor``, ``> 0``.
        anneal: ``"cos"`` or ``"linear"``.
        three_phase: use the symmetric three-phase variant.
        name: optional name of the schedule.

    Example:
        >>> sched = OneCycle(0.1, total_steps=100)
        >>> round(float(sched(0)), 6), round(float(sched(29)), 6)
        (0.004, 0.1)
        >>> optimizer = keras.optimizers.SGD(learning_rate=sched, momentum=0.9)
    """

    def __init__(
        self,
        max_lr: float,
        total_steps: int,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        anneal: str = "cos",
        three_phase: bool = False,
        name: str | None = None,
    ):
        super().__init__()
        _check_choice("anneal", anneal, ANNEAL_MODES)
        if not max_lr > 0:
            raise ValueError(f"`max_lr` must be > 0; received max_lr={max_lr!r}.")
        if not (total_steps >= 1 and float(total_steps).is_integer()):
            raise ValueError(
                f"`total_steps` must be an integer >= 1; received total_steps={total_steps!r}."
            )
        upper = 0.5 if three_phase else 1.0
        if not 0 < pct_start < upper:
            raise ValueError(
                f"`pct_start` must be in (0, {upper}) when three_phase={three_phase}; "
                f"received pct_start={pct_start!r}."
            )
        if not div_factor > 0:
            raise ValueError(f"`div_factor` must be > 0; received div_factor={div_factor!r}.")
        if not final_div_factor > 0:
            raise ValueError(
                f"`final_div_factor` must be > 0; received final_div_factor={final_div_factor!r}."
            )
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.anneal = anneal
        self.three_phase = bool(three_phase)
        self.name = name

    @property
    def initial_lr(self) -> float:
        return self.max_lr / self.div_factor

    @property
    def min_lr(self) -> float:
        return self.initial_lr / self.final_div_factor

    def phases(self) -> list[tuple[float, float, float]]:
        """``(end_step, start_lr, end_lr)`` of each phase, as in PyTorch."""
        warm_end = self.pct_start * self.total_steps - 1.0
        last = self.total_steps - 1.0
        if self.three_phase:
            return [
                (warm_end, self.initial_lr, self.max_lr),
                (2.0 * self.pct_start * self.total_steps - 2.0, self.max_lr, self.initial_lr),
                (last, self.initial_lr, self.min_lr),
            ]
        return [(warm_end, self.initial_lr, self.max_lr), (last, self.max_lr, self.min_lr)]

    def _anneal(self, start_lr: float, end_lr: float, remaining):
        """Annealed value with ``remaining = 1 - pct`` of the phase left.

        Written from the end of the phase (``end + (start - end) * f(remaining)``,
        with ``(1 + cos(pi * pct)) / 2 = sin^2(pi * remaining / 2)``) so that float32
        keeps full relative precision as the rate approaches a tiny ``min_lr``.
        """
        if self.anneal == "cos":
            return end_lr + (start_lr - end_lr) * ops.square(ops.sin(math.pi / 2.0 * remaining))
        return end_lr + (start_lr - end_lr) * remaining

    def __call__(self, step):
        step = ops.minimum(ops.cast(step, "float32"), float(self.total_steps - 1))
        values, start = [], 0.0
        for end, start_lr, end_lr in self.phases():
            # A zero-length phase (pct_start * total_steps == 1) would divide 0/0.
            span = end - start if end != start else 1.0
            values.append((end, self._anneal(start_lr, end_lr, (end - step) / span)))
            start = end
        # The first phase whose end is not yet passed wins; the last one catches the rest.
        lr = values[-1][1]
        for end, value in reversed(values[:-1]):
            lr = ops.where(step <= end, value, lr)
        return lr

    def get_config(self) -> dict:
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "anneal": self.anneal,
            "three_phase": self.three_phase,
            "name": self.name,
        }


__all__ = ["CyclicalLearningRate", "OneCycle", "CLR_MODES", "ANNEAL_MODES"]

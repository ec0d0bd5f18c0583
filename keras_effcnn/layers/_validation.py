"""Argument and input-shape checks, shared by the layers, the zoo, the recipes and the data.

Every check raises ``ValueError`` with one wording, ``"`name` must be
<allowed>; got <value>."``, naming the argument, the allowed range and the value
given, so a typo in a recipe fails at construction time rather than as a shape
error deep inside a traced graph.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any, Callable

import keras


def check(ok: bool, name: str, value: Any, allowed: str) -> None:
    """Raise ``ValueError("`name` must be <allowed>; got <value>.")`` unless ``ok``.

    Example:
        >>> check(3 >= 1, "epochs", 3, ">= 1")
    """
    if not ok:
        raise ValueError(f"`{name}` must be {allowed}; got {value!r}.")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer in ``[low, high]``."""
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer {allowed}; got {value!r}.")
    if value < low or (high is not None and value > high):
        raise ValueError(f"`{name}` must be an integer {allowed}; got {value!r}.")
    return int(value)


def check_float(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_inclusive: bool,
    high_inclusive: bool,
) -> float:
    """Return ``value`` as a ``float`` if it lies in the given interval."""
    interval = (
        ("[" if low_inclusive else "(")
        + f"{low}, {high}"
        + ("]" if high_inclusive else ")")
    )
    message = f"`{name}` must be a number in {interval}; got {value!r}."
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(message)
    value = float(value)
    above = value >= low if low_inclusive else value > low
    below = value <= high if high_inclusive else value < high
    if not (above and below):
        raise ValueError(message)
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}; got {value!r}.")
    return value


def check_dropout(value: Any) -> float:
    """A dropout rate must lie in ``[0, 1)``; 1 would zero every activation."""
    return check_float("dropout", value, 0.0, 1.0, low_inclusive=True, high_inclusive=False)


def resolve_activation(name: str, identifier: Any) -> tuple[Callable | None, Any]:
    """Return ``(function or None, serializable identifier)`` for an activation.

    ``None`` means "no activation" and is kept as ``None`` so that configs stay
    readable; anything else goes through ``keras.activations.get``.
    """
    if identifier is None:
        return None, None
    try:
        function = keras.activations.get(identifier)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be None, a Keras activation name such as 'relu', or a "
            f"registered callable; got {identifier!r}."
        ) from error
    return function, keras.activations.serialize(function)


def check_input_rank(layer_name: str, input_shape: Any) -> tuple:
    """Require a channels-last ``(batch, H, W, C)`` shape with a known ``C``."""
    shape = tuple(input_shape)
    if len(shape) != 4:
        raise ValueError(
            f"{layer_name} expects a 4D channels-last input of shape (batch, H, W, C); "
            f"got shape {shape} (rank {len(shape)})."
        )
    if shape[-1] is None:
        raise ValueError(
            f"{layer_name} needs a known channel count C in its (batch, H, W, C) "
            f"input; got shape {shape}."
        )
    return shape

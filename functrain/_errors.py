"""One vocabulary for errors: how values are described, and the argument validators.

Every message in functrain has the shape ``<argument or leaf path>: expected X, got Y.`` with a
``HINT: ...`` where one helps. `describe` words the "got Y" part the same way everywhere, and the
validators below check the plain kinds of argument (ints, numbers, choices) so that no module
writes its own.

Example:
    >>> import torch
    >>> describe(torch.zeros(2, 3))
    'a float32 tensor of shape (2, 3)'
    >>> check_int("log_every", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: log_every: expected an int >= 1, got 0.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["check_choice", "check_int", "check_number", "describe"]


def describe(x: Any) -> str:
    """A short description of a value, for the "got Y" part of an error message.

    Tensors are described by dtype and shape (never by value: reading one may sync a device);
    numbers, strings, bools and None by their repr; anything else by its type.
    """
    if isinstance(x, torch.Tensor):
        return f"a {str(x.dtype).removeprefix('torch.')} tensor of shape {tuple(x.shape)}"
    if isinstance(x, (bool, numbers.Number, str)) or x is None:
        text = repr(x)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"an object of type {type(x).__name__}"


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_int(name: str, value: Any, *, minimum: int | None = None, allow_none: bool = False,
              hint: str = "") -> int | None:
    """Check that ``value`` is an int (not a bool) ``>= minimum``; return it.

    Raises:
        TypeError: ``value`` is not an int (``"12"``, ``5.9``, ``True``).
        ValueError: ``value`` is below ``minimum``.
    """
    if value is None and allow_none:
        return None
    suffix = f" >= {minimum}" if minimum is not None else ""
    none = " or None" if allow_none else ""
    hint = f" HINT: {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int{suffix}{none}, got {describe(value)}.{hint}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an int{suffix}{none}, got {value!r}.{hint}")
    return int(value)


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, allow_none: bool = False,
                 hint: str = "") -> float | None:
    """Check that ``value`` is a real number (not a bool, not NaN) in the given range; return it.

    ``low``/``high`` bound the range; ``low_open``/``high_open`` exclude the bound itself.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: it is NaN or out of range.
    """
    if value is None and allow_none:
        return None
    hint = f" HINT: {hint}" if hint else ""
    none = " or None" if allow_none else ""
    if not _is_number(value):
        raise TypeError(f"{name}: expected a number{none}, got {describe(value)}.{hint}")
    if value != value:
        raise ValueError(f"{name}: expected a number{none}, got nan.{hint}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ValueError(f"{name}: expected a number in {lo}, {hi}{none}, got {value!r}.{hint}")
    return float(value)


def check_choice(name: str, value: Any, choices: Iterable[Any], *, hint: str = "") -> Any:
    """Check that ``value`` is one of ``choices`` (compared with ``==``, types kept); return it.

    Raises:
        ValueError: ``value`` is not among ``choices``.
    """
    options = list(choices)
    if not any(type(value) is type(c) and value == c for c in options):
        hint = f" HINT: {hint}" if hint else ""
        listed = ", ".join(repr(c) for c in options)
        raise ValueError(f"{name}: expected one of {listed}, got {describe(value)}.{hint}")
    return value

"""Numbers as users write them: finite floats and budgets in 1/255 units (no torch here:
the command line imports it to parse its flags)."""

from __future__ import annotations

import math


def finite(text: str) -> float:
    """``text`` as a finite float; ValueError (``not a number: 'x'``, ``must be a finite
    number, got 'inf'``) otherwise: NaN and infinity pass every range check."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text!r}")
    return value


def parse_budget(text: str) -> float:
    """A budget as users write it, in pixel units: ``8`` is 8/255 (a bare number counts
    levels of 1/255) and ``8/255`` or ``1/32`` is that fraction. ValueError when it is not
    a number or divides by zero; the range is the caller's to check (its message names it)."""
    num, sep, den = text.partition("/")
    levels = finite(num)
    if sep:
        d = finite(den)
        if d == 0:
            raise ValueError(f"not a budget: {text!r}")
        levels = levels * 255.0 / d
    return levels / 255.0

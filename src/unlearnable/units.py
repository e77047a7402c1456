"""Numbers as users write them: finite floats and budgets in 1/255 units (no torch here:
the command line imports it to parse its flags)."""

from __future__ import annotations

import math
import re

# "a/b" with two plain decimal numbers: what a config or a flag means by a fraction. Only
# this form is a fraction, so a label such as "crop/flip" stays a string.
_FRACTION = re.compile(r"\s*([-+]?[0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*")


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


def fraction(text: str) -> float | None:
    """``"a/b"`` (two decimal numbers) as the float a/b; None when ``text`` is not of that
    form; ValueError when b is zero."""
    m = _FRACTION.fullmatch(text)
    if m is None:
        return None
    den = float(m.group(2))
    if den == 0:
        raise ValueError(f"division by zero in {text!r}")
    return float(m.group(1)) / den


def parse_budget(text: str) -> float:
    """A budget as users write it, in pixel units: ``8`` is 8/255 (a bare number counts
    levels of 1/255) and ``8/255`` or ``1/32`` is that fraction. ValueError when it is not
    a number or a fraction, or divides by zero; the range is the caller's to check (its
    message names it)."""
    if "/" not in text:
        return finite(text) / 255.0
    value = fraction(text)
    if value is None:
        raise ValueError(f"not a budget: {text!r}")
    return value

"""The one exception type that user-facing code raises for bad input.

The CLI turns it into a single line on stderr and a non-zero exit; library callers can
catch it. Its message names the problem (and the offending path or value). A message that
tells the caller to set one of their options names it by its parameter name in backticks
(``pass `overwrite` to replace it``): the library knows no command line, and the CLI prints
the flag of that parameter instead (``--overwrite``).
"""


class UnlearnableError(Exception):
    """Bad input or an impossible request; the message is shown to the user as is."""


def check_finite_fields(owner: str, config) -> None:
    """Refuse a dataclass ``config`` with a float field that is NaN or infinite.

    A NaN learning rate or budget passes every ``<`` / ``>`` range check (all comparisons
    with NaN are false), so it is refused here, once, for every config.
    """
    import dataclasses
    import math

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UnlearnableError(f"{owner}: {f.name} must be a finite number, got {value}")


def check_seed(seed) -> int:
    """A seed is a non-negative integer (numpy's generators refuse negative ones deep inside)."""
    import numbers
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise UnlearnableError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)

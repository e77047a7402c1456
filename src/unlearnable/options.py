"""Settings given as overrides of a dataclass config (an attack's, protect's): one way to
apply them, with one error for an unknown name, and one sentinel for "not given".

A keyword left at :data:`NOT_GIVEN` keeps the preset's value; None is a value like any
other (``stop_acc=None`` undoes a preset's threshold), so "not given" cannot be None.
"""

from __future__ import annotations

import dataclasses

from .errors import UnlearnableError


class _NotGiven:
    """The type of :data:`NOT_GIVEN` (one instance; false in a test; reads as its name)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __reduce__(self):
        return "NOT_GIVEN"  # copies and pickles are the one instance


#: A keyword's default when leaving it out means "the preset's value".
NOT_GIVEN = _NotGiven()


def given(options: dict) -> dict:
    """``options`` less those left at :data:`NOT_GIVEN`."""
    return {k: v for k, v in options.items() if v is not NOT_GIVEN}


def with_overrides(owner: str, config, overrides: dict):
    """A copy of the dataclass ``config`` with ``overrides`` applied; an unknown name is a
    one-line error; an override left at :data:`NOT_GIVEN` keeps the config's value.

    None is a value like any other: it resets an optional setting and is refused, naming
    the setting, for one that cannot be None.
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    unknown = set(overrides) - set(fields)
    if unknown:
        raise UnlearnableError(f"{owner}: unknown option(s) {sorted(unknown)}")
    overrides = given(overrides)
    for k, v in overrides.items():
        if v is None and "None" not in str(fields[k].type):
            raise UnlearnableError(f"{owner}: {k} cannot be None")
    return dataclasses.replace(config, **overrides)

"""Settings given as overrides of a dataclass config (an attack's, protect's): one way to
apply them, with one error for an unknown name."""

from __future__ import annotations

import dataclasses

from .errors import UnlearnableError


def with_overrides(owner: str, config, overrides: dict, *, skip_none: bool = False):
    """A copy of the dataclass ``config`` with ``overrides`` applied; an unknown name is a
    one-line error.

    None is a value like any other: it resets an optional setting (``stop_acc=None`` undoes
    a preset's threshold) and is refused for a setting that cannot be None. Callers whose
    None means "not given" (a flag left unset) drop those keys first, or pass ``skip_none``.
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    unknown = set(overrides) - set(fields)
    if unknown:
        raise UnlearnableError(f"{owner}: unknown option(s) {sorted(unknown)}")
    if skip_none:
        overrides = {k: v for k, v in overrides.items() if v is not None}
    for k, v in overrides.items():
        if v is None and "None" not in str(fields[k].type):
            raise UnlearnableError(f"{owner}: {k} cannot be None")
    return dataclasses.replace(config, **overrides)

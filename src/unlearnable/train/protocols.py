"""Training-protocol registry: ``st`` (standard), ``at`` (adversarial), ``simclr``, ...

A protocol is ``fn(train, test, cfg, *, seed, defenses, options) -> TrainResult`` where
``cfg`` is a :class:`~unlearnable.train.standard.VictimConfig`, ``defenses`` a list from
:func:`unlearnable.defenses.parse_defenses` and ``options`` the protocol's own settings
(e.g. ``{"at_eps": 4/255}``). ``unlearnable train --protocol NAME`` and experiment
configs look protocols up here.
"""

from __future__ import annotations

import re
from typing import Callable

from ..units import parse_budget
from ..errors import UnlearnableError

_PROTOCOLS: dict[str, Callable] = {}


def register_protocol(name: str):
    def deco(fn):
        _PROTOCOLS[name] = fn
        return fn
    return deco


def protocol_names() -> list[str]:
    return sorted(_PROTOCOLS)


def get_protocol(name: str) -> Callable:
    fn = _PROTOCOLS.get(name.lower())
    if fn is None:
        raise UnlearnableError(f"unknown protocol {name!r}; choose from {', '.join(protocol_names())}")
    return fn


def parse_protocol(text: str) -> tuple[str, tuple]:
    """``st`` / ``at`` / ``at-4`` / any registered protocol -> (name, options)."""
    text = text.strip().lower()
    m = re.fullmatch(r"at-([0-9.]+(?:/[0-9.]+)?)", text)
    if m:
        try:
            eps = parse_budget(m.group(1))
        except ValueError:
            raise UnlearnableError(f"bad AT budget in {text!r}; write at-E with E in 1/255 units, e.g. at-4") from None
        if not 0 < eps <= 1:
            raise UnlearnableError(f"AT budget must be in (0, 255]/255, got {text!r}")
        return "at", (("at_eps", eps),)
    get_protocol(text)
    return text, ((("at_eps", 8 / 255),) if text == "at" else ())

"""Training-protocol registry: ``st`` (standard), ``at`` (adversarial), ``simclr``, ...

A protocol is ``fn(train, test, cfg, *, seed, defenses, options) -> TrainResult`` where
``cfg`` is a :class:`~unlearnable.train.standard.VictimConfig`, ``defenses`` a list from
:func:`unlearnable.defenses.parse_defenses` and ``options`` the protocol's own settings
(e.g. ``{"at_eps": 4/255}``). ``unlearnable train --protocol NAME`` and experiment
configs look protocols up here.
"""

from __future__ import annotations

from typing import Callable

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

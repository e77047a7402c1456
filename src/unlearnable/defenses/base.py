"""The defense contract and registry.

A defense is one of two kinds, and a victim run may compose any number of each:

* a **data** defense transforms the (possibly protected) training set once, before
  training: ``apply(train, *, seed, device) -> ImageDataset`` (JPEG, grayscale, OP,
  D-VAE, AVA, LE). The test set is never touched: the victim is scored on clean data.
* a **batch** defense changes each training batch inside the loop, on the model's device:
  ``batch(model, x, y, generator) -> (x, target)`` where ``target`` is int64 labels or a
  float (B, K) soft-label matrix (Cutout, CutMix, Mixup, UEraser).

Specs are ``name`` or ``name:arg`` (``jpeg:10``); :func:`parse_defenses` turns a comma
list into instances, with one-line errors for unknown names and bad arguments.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import UnlearnableError

_DEFENSES: dict[str, type["Defense"]] = {}


def register_defense(cls):
    _DEFENSES[cls.name] = cls
    return cls


def defense_names() -> list[str]:
    return sorted(_DEFENSES)


class Defense:
    name: ClassVar[str] = ""
    kind: ClassVar[str] = "data"  # "data" or "batch"

    @classmethod
    def from_arg(cls, arg: str | None) -> "Defense":
        """Build from the text after ``name:`` in a spec (None when absent)."""
        if arg is not None:
            raise UnlearnableError(f"defense {cls.name!r} takes no argument, got {arg!r}")
        return cls()

    def apply(self, train, *, seed: int = 0, device=None):
        raise NotImplementedError

    def batch(self, model, x, y, generator):
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def parse_defenses(spec: str | None) -> list[Defense]:
    """``"jpeg:10,ueraser"`` -> [JPEG(quality=10), UEraser()]; ``None``/``""``/``"none"`` -> []."""
    if spec in (None, "", "none"):
        return []
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            raise UnlearnableError(f"empty defense in spec {spec!r}")
        name, _, arg = part.partition(":")
        cls = _DEFENSES.get(name.strip().lower())
        if cls is None:
            raise UnlearnableError(f"unknown defense {name!r}; choose from {', '.join(defense_names())}")
        out.append(cls.from_arg(arg.strip() if arg else None))
    return out


def canonical_defenses(spec: str | None) -> str:
    """A defense spec in its one canonical spelling (``"JPEG:10, cutout"`` -> ``"jpeg:10,cutout"``),
    ``"none"`` for no defense."""
    return ",".join(d.describe() for d in parse_defenses(spec)) or "none"

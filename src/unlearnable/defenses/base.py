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

from dataclasses import dataclass
from typing import ClassVar

from ..errors import UnlearnableError

_DEFENSES: dict[str, type["Defense"]] = {}


def register_defense(cls):
    _DEFENSES[cls.name] = cls
    return cls


def defense_names() -> list[str]:
    return sorted(_DEFENSES)


@dataclass(frozen=True)
class SpecArg:
    """The one number a defense's spec may carry (``jpeg:10``): the constructor keyword it
    sets, its type and closed range (``positive``: zero refused too), and whether the spec
    names it always (``jpeg:10``) or only where it departs from the default (``mixup``)."""
    keyword: str
    cast: type = float
    lo: float | None = None
    hi: float | None = None
    positive: bool = False
    always: bool = True

    def parse(self, name: str, text: str):
        try:
            value = self.cast(text)
        except ValueError:
            raise UnlearnableError(f"defense {name!r}: argument must be "
                                   f"{'an integer' if self.cast is int else 'a number'}, got {text!r}") from None
        if value != value or (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise UnlearnableError(f"defense {name!r}: argument must be in [{self.lo}, {self.hi}], got {text}")  # NaN too
        if self.positive and value <= 0:
            raise UnlearnableError(f"defense {name!r}: {self.keyword} must be positive, got {text}")
        return value


class Defense:
    name: ClassVar[str] = ""
    kind: ClassVar[str] = "data"  # "data" or "batch"
    #: the number ``name:ARG`` sets (None: the spec takes no argument)
    arg: ClassVar[SpecArg | None] = None

    @classmethod
    def from_arg(cls, arg: str | None) -> "Defense":
        """Build from the text after ``name:`` in a spec (None when absent: the defaults)."""
        if arg is None:
            return cls()
        if cls.arg is None:
            raise UnlearnableError(f"defense {cls.name!r} takes no argument, got {arg!r}")
        return cls(**{cls.arg.keyword: cls.arg.parse(cls.name, arg)})

    def apply(self, train, *, seed: int = 0, device=None):
        raise NotImplementedError

    def batch(self, model, x, y, generator):
        raise NotImplementedError

    def describe(self) -> str:
        """The canonical spec of this instance (what results and configs record)."""
        if self.arg is None:
            return self.name
        value = getattr(self, self.arg.keyword)
        if value is None or (not self.arg.always and value == getattr(type(self)(), self.arg.keyword)):
            return self.name
        return f"{self.name}:{value:g}"


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

"""The attackers a protection faces, and the worst case over them.

A protection is worth what the best-informed attacker still gets, so ``compare`` can train,
besides its scratch victim, one victim per *attacker* on every protected set and report the
highest clean test accuracy any of them reaches (the worst case for the protector), named.

An attacker is written as one word:

* ``none``: the scratch victim, standard training (the compare row itself);
* ``st-es`` (or ``es``): early stopping on clean labelled images held out of the test set
  (protocol ``st-es``; its accuracy is on the rest of the test set);
* ``at`` / ``at-E``: PGD adversarial training at E/255 (the victim preset's AT recipe);
* ``finetune`` / ``low-lr`` / ``probe``: start from a prior pretrained on clean images
  disjoint from the protected ones (full fine-tune, backbone at a tenth of the rate, or a
  linear probe on its frozen features);
* ``crop-flip`` / ``crop`` / ``flip`` (``crop-flip:P``, ``crop:P``: padding P pixels, default
  the victim preset's): standard training with that data augmentation, the recipe most
  image classifiers are trained with;
* anything else is a defense spec (``jpeg:10``, ``bdr``, ``blur``, ``ueraser``,
  ``jpeg:10,grayscale``, ...), under standard training.

``grayscale`` alone on grey data changes nothing and is skipped there (reported as such).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..defenses.base import canonical_defenses, parse_defenses
from ..errors import UnlearnableError
from ..train import get_protocol
from ..train.protocols import parse_protocol

#: The default list of ``compare --defenses``: none, early stopping, JPEG-10, grayscale
#: (colour data only), BDR, blur, UEraser, AT-4, fine-tune from a prior, linear probe on it.
DEFAULT_ATTACKERS = ("none", "st-es", "jpeg:10", "grayscale", "bdr", "blur", "ueraser", "at-4", "finetune",
                     "probe")

_PRIOR_MODES = {"finetune": "full", "fine-tune": "full", "low-lr": "low-lr", "probe": "linear-probe",
                "linear-probe": "linear-probe"}


@dataclass(frozen=True)
class Attacker:
    label: str  # canonical: none, st-es, at-4, finetune, low-lr, probe, or a canonical defense spec
    protocol: str = "st"
    options: tuple = ()  # sorted (key, value) protocol options
    defenses: str = "none"
    finetune: str | None = None  # start from the prior in this fine-tune mode
    augment: str | None = None  # train with this augmentation (crop-flip, crop, flip)
    crop_padding: int | None = None  # its crop padding (None: the victim preset's)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._+=-]+", "_", self.label.replace(":", "-").replace(",", "+"))

    def skipped(self, channels: int) -> str | None:
        """Why this attacker does not apply to ``channels``-channel data (None: it does)."""
        if channels == 1 and self.defenses == "grayscale" and self.protocol == "st" and self.finetune is None:
            return "grey data: grayscale changes nothing"
        return None


def parse_attacker(text: str) -> Attacker:
    word = str(text).strip().lower()
    if not word:
        raise UnlearnableError("empty attacker in the defenses list")
    if word in ("none", "st"):
        return Attacker("none")
    if word in ("st-es", "es", "early-stopping"):
        return Attacker("st-es", "st-es")
    if word in _PRIOR_MODES:
        label = {"full": "finetune", "low-lr": "low-lr", "linear-probe": "probe"}[_PRIOR_MODES[word]]
        return Attacker(label, finetune=_PRIOR_MODES[word])
    augment = _parse_augment(word)
    if augment is not None:
        return augment
    if word == "at" or word.startswith("at-"):
        name, options = parse_protocol(word)
        return Attacker(f"at-{dict(options)['at_eps'] * 255:g}", name, tuple(sorted(options)))
    try:
        spec = canonical_defenses(word)
    except UnlearnableError as e:
        raise UnlearnableError(f"unknown attacker {text!r}: not none, st-es, at-E, finetune, low-lr, probe, "
                               f"crop-flip, crop or flip, and not a defense spec ({e})") from None
    return Attacker(spec, defenses=spec)


def _parse_augment(word: str) -> Attacker | None:
    """``crop-flip``, ``crop``, ``flip``, ``crop-flip:P``, ``crop:P`` as an attacker (None: not one)."""
    name, _, padding = word.partition(":")
    if name not in ("crop-flip", "crop", "flip"):
        return None
    if not padding:
        return Attacker(name, augment=name)
    if name == "flip":
        raise UnlearnableError(f"attacker {word!r}: flip has no crop padding")
    if not padding.isdigit() or int(padding) <= 0:
        raise UnlearnableError(f"attacker {word!r}: the crop padding must be a positive whole number of pixels")
    return Attacker(f"{name}:{int(padding)}", augment=name, crop_padding=int(padding))


def parse_attackers(items) -> list[Attacker]:
    """Attackers from a list of words (None or empty: :data:`DEFAULT_ATTACKERS`), duplicates
    dropped; ``none`` is always first (the scratch victim every row has anyway)."""
    parsed = [parse_attacker(w) for w in (items or DEFAULT_ATTACKERS)]
    out = [Attacker("none")]
    for a in parsed:
        if a not in out:
            out.append(a)
    return out


def needs_prior(attackers) -> bool:
    return any(a.finetune is not None for a in attackers)


def train_attacker(attacker: Attacker, train, test, victim_config, *, seed: int, prior: str | None = None,
                   desc: str = "victim"):
    """Train ``attacker``'s victim on ``train``; ``victim_config(protocol)`` gives the recipe
    (a :class:`~unlearnable.train.VictimConfig`) for a protocol name; ``prior`` is the
    checkpoint the prior attackers start from."""
    cfg = victim_config(attacker.protocol)
    if attacker.finetune is not None:
        if prior is None:
            raise UnlearnableError(f"attacker {attacker.label} needs a prior checkpoint")
        cfg = replace(cfg, init=str(prior), finetune=attacker.finetune).validate()
    if attacker.augment is not None:
        cfg = replace(cfg, augment=attacker.augment,
                      crop_padding=cfg.crop_padding if attacker.crop_padding is None else attacker.crop_padding)
    return get_protocol(attacker.protocol)(train, test, cfg, seed=seed, defenses=parse_defenses(attacker.defenses),
                                           options=dict(attacker.options), desc=f"{desc} [{attacker.label}]")


def worst_case(by_attacker: dict) -> dict:
    """The highest accuracy among the attackers that ran (``{label: acc or None}``) and who reached it."""
    ran = {k: v for k, v in by_attacker.items() if v is not None}
    if not ran:
        return {"attacker": None, "test_acc": None}
    label = max(ran, key=lambda k: ran[k])  # the first listed on ties
    return {"attacker": label, "test_acc": ran[label]}

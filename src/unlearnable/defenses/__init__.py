"""Defenses against unlearnable examples, each composable with any training protocol."""

from .base import Defense, defense_names, parse_defenses, register_defense

__all__ = ["Defense", "defense_names", "parse_defenses", "register_defense"]
from . import filters, grayscale, jpeg, op, ueraser  # noqa: E402,F401  (register BDR/blur/noise, ISS, OP, UEraser)
from ..train import mixing  # noqa: E402,F401  (registers cutout, cutmix, mixup)
from . import ava, dvae, le  # noqa: E402,F401  (register the learned purifiers D-VAE, AVA, LE)

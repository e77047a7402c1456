"""Defenses against unlearnable examples, each composable with any training protocol."""

from .base import Defense, defense_names, parse_defenses, register_defense

__all__ = ["Defense", "defense_names", "parse_defenses", "register_defense"]

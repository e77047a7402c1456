"""Attacks (unlearnable-example generators): one module each, a shared PGD engine, a registry."""

from .base import Attack, AttackResult, attack_names, get_attack, register_attack
from .losses import mi_loss, mi_loss_naive, mi_loss_per_sample
from .mi_ue import MIUE, MIUEConfig
from .pgd import pgd, project
from .random_noise import RandomNoise

__all__ = ["Attack", "AttackResult", "attack_names", "get_attack", "register_attack", "mi_loss",
           "mi_loss_naive", "mi_loss_per_sample", "MIUE", "MIUEConfig", "RandomNoise", "pgd", "project"]

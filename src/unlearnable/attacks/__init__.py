"""Attacks (unlearnable-example generators): one module each, a shared PGD engine, a registry."""

from .a_mi_ue import AMIUE
from .ap import AP, APUntargeted
from .ar import AR
from .bait import BAIT
from .base import Attack, AttackResult, attack_names, get_attack, register_attack
from .em import EM, EMClass
from .entf import ENTF
from .gue import GUE
from .losses import mi_loss, mi_loss_naive, mi_loss_per_sample
from .lsp import LSP
from .mi_ue import MIUE, MIUEConfig
from .mi_ue_gen import MIUEGen
from .ntga import NTGA
from .ops import OPS
from .pgd import pgd, project
from .random_noise import RandomNoise
from .rem import REM
from .sem import SEM
from .tue import TUE

__all__ = ["Attack", "AttackResult", "attack_names", "get_attack", "register_attack", "mi_loss",
           "mi_loss_naive", "mi_loss_per_sample", "MIUE", "MIUEConfig", "RandomNoise", "pgd", "project",
           "EM", "EMClass", "AP", "APUntargeted", "AR", "BAIT", "LSP", "OPS", "REM", "SEM", "ENTF", "NTGA", "GUE", "TUE", "AMIUE", "MIUEGen"]

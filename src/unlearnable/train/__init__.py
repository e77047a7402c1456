"""Victim training protocols (``st``, ``at``, ``simclr``), the shared loops, and the mixing batch defenses."""

from .loops import TensorData, evaluate, train_epoch
from .protocols import get_protocol, protocol_names, register_protocol
from .standard import VICTIM_PRESETS, TrainResult, VictimConfig, best_epoch, train_victim, victim_preset
from .adversarial import ATConfig, robust_accuracy  # registers "at"
from . import simclr  # noqa: E402,F401 - registers "simclr" and its cpu-simclr / paper-simclr presets

__all__ = ["TensorData", "evaluate", "train_epoch", "VictimConfig", "VICTIM_PRESETS", "TrainResult",
           "best_epoch", "train_victim", "victim_preset", "ATConfig", "robust_accuracy", "get_protocol",
           "protocol_names", "register_protocol"]

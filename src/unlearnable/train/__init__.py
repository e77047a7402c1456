"""Victim training protocols."""

from .loops import TensorData, evaluate, train_epoch
from .standard import VICTIM_PRESETS, TrainResult, VictimConfig, train_victim, victim_preset

__all__ = ["TensorData", "evaluate", "train_epoch", "VictimConfig", "VICTIM_PRESETS", "TrainResult",
           "train_victim", "victim_preset"]

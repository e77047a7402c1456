"""The uniform attack interface, the registry and the generation checkpoint.

Every attack is a class with a ``Config`` dataclass and ``generate(train, seed=...)``
returning a float perturbation in pixel units; quantisation to uint8 and writing to disk
are done once, by :mod:`unlearnable.data.poisoned`, for all attacks.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..data.augment import build_augment
from ..errors import UnlearnableError, check_finite_fields
from ..fsutil import atomic_path
from ..options import with_overrides

_ATTACKS: dict[str, type["Attack"]] = {}


def register_attack(cls):
    _ATTACKS[cls.name] = cls
    return cls


def attack_names() -> list[str]:
    return sorted(_ATTACKS)


def get_attack(name: str) -> type["Attack"]:
    cls = _ATTACKS.get(name.lower())
    if cls is None:
        raise UnlearnableError(f"unknown method {name!r}; choose from {', '.join(attack_names())}")
    return cls


@dataclass
class AttackResult:
    delta: torch.Tensor  # float32 (N, C, H, W) on the CPU, pixel units in [-eps, eps]
    info: dict = field(default_factory=dict)


class Attack:
    name: ClassVar[str] = ""
    Config: ClassVar[type]
    presets: ClassVar[dict] = {}

    def __init__(self, config=None, **overrides):
        self.config = with_overrides(self.name, config if config is not None else self.Config(), overrides)
        check_finite_fields(self.name, self.config)
        validate = getattr(self.config, "validate", None)
        if validate:
            validate()
        # Refuse an unknown source model or an unavailable device now, before a caller
        # creates anything, not when generation starts.
        if isinstance(getattr(self.config, "model", None), str):
            from ..models import check_model_name
            check_model_name(self.config.model)
        if isinstance(getattr(self.config, "device", None), str):
            from ..runtime import resolve_device
            resolve_device(self.config.device)

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "Attack":
        if preset not in cls.presets:
            raise UnlearnableError(f"{cls.name}: unknown preset {preset!r}; choose from {sorted(cls.presets)}")
        return cls(cls.presets[preset], **overrides)

    def generate(self, train, *, seed: int = 0, workdir: str | os.PathLike | None = None,
                 resume: bool = False) -> AttackResult:
        raise NotImplementedError

    def l0_pixels(self) -> int | None:
        """The L0 budget (pixel positions changed per image) of an L0 attack, else None.

        An L-inf attack (the default) is bounded by ``config.eps`` alone. An attack that
        returns a number here is written with both checks: at most that many changed pixel
        positions per image, and L-inf at most ``config.eps``; the manifest records
        ``norm: "l0"`` and ``l0_pixels``.
        """
        return None


def unchanged_presets(config_cls) -> dict:
    """The presets of an attack with nothing to scale down for a CPU: its paper's defaults
    are its ``cpu`` preset too."""
    return {"cpu": config_cls(), "paper-cifar10": config_cls()}


def inherit_presets(parent: type[Attack], config_cls) -> dict:
    """A variant's presets from its parent's: each preset's departures from the parent's
    defaults, applied to the variant's own defaults (so ``ap-untargeted`` is ``ap``'s
    preset with ``targeted=False``, and a change to a parent preset reaches its variants)."""
    base = parent.Config()
    return {name: config_cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                                if getattr(cfg, f.name) != getattr(base, f.name)})
            for name, cfg in parent.presets.items()}


def check_positive(owner: str, config, fields) -> None:
    """Refuse a config whose integer ``fields`` are not positive (one-line error naming it)."""
    for k in fields:
        if int(getattr(config, k)) <= 0:
            raise UnlearnableError(f"{owner}: {k} must be positive, got {getattr(config, k)}")


def check_eps(eps: float) -> None:
    if not (0 < eps <= 1):
        raise UnlearnableError(f"eps must be in (0, 255]/255, got {eps * 255:g}/255")


@dataclass
class SourceConfig:
    """The settings of every attack that trains a model of its own (a source classifier, a
    SimCLR backbone, a generator's follower). An attack's ``Config`` subclasses this (or
    :class:`ClassifierSourceConfig`), redeclares a field only where its paper's default
    differs (the field keeps its place) and adds its own fields after these."""
    model: str = "cnn"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 5e-4
    eps: float = 8 / 255
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = True

    def check_source(self, owner: str, positive=()) -> None:
        """The checks they all make: the budget, and ``epochs``, ``batch_size`` and the
        integer fields ``positive`` positive (one-line errors naming ``owner``)."""
        check_eps(self.eps)
        check_positive(owner, self, ("epochs", "batch_size", *positive))


@dataclass
class ClassifierSourceConfig(SourceConfig):
    """A source model trained by SGD with momentum, on augmented images."""
    momentum: float = 0.9
    train_augment: str = "crop-flip"
    crop_padding: int = 4  # 4 is the CIFAR (32 px) setting; 2 suits 28 px images

    def check_source(self, owner: str, positive=()) -> None:
        super().check_source(owner, positive)
        if self.crop_padding < 0:
            raise UnlearnableError(f"{owner}: crop_padding must be non-negative, got {self.crop_padding}")
        try:
            build_augment(self.train_augment, self.crop_padding)
        except UnlearnableError as e:
            raise UnlearnableError(f"{owner}: train_augment: {e}") from None


class UnusableCheckpoint(UnlearnableError):
    """A checkpoint that cannot be resumed (unreadable, or made by another run); ``why`` says
    which, for callers that start again instead of stopping (compare's cached rows)."""

    def __init__(self, message: str, why: str):
        super().__init__(message)
        self.why = why


class Checkpoint:
    """An atomically replaced ``checkpoint.pt`` holding tensors and plain Python values.

    Loaded with ``weights_only=True``: a checkpoint cannot run code when read.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir) / "checkpoint.pt"

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, state: dict) -> None:
        with atomic_path(self.path, suffix=".pt") as tmp:
            torch.save(state, tmp)

    def load(self) -> dict:
        try:
            with warnings.catch_warnings():  # torch warns about a foreign pickle protocol: the error says it
                warnings.simplefilter("ignore")
                return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means an unusable checkpoint
            # torch's message runs to several lines and advises loading with weights_only=False,
            # which would run code from the file: say what happened in one line instead.
            why = ("it holds objects other than tensors and plain values, refused without unpickling"
                   if isinstance(e, pickle.UnpicklingError) else "damaged or not a checkpoint")
            raise UnusableCheckpoint(f"cannot read checkpoint {self.path}: {why}; rerun without `resume` "
                                     f"(or with `overwrite`) to start again", why) from None

    def load_matching(self, method: str, config: dict, seed: int, fingerprint: str, **more) -> dict:
        """Load, refusing a checkpoint of another method, config, seed, data or ``more`` (e.g. a block size):
        resuming from it would silently mix two different runs."""
        state = self.load()
        want = {"method": method, "config": config, "seed": seed, "fingerprint": fingerprint, **more}
        differ = [k for k, v in want.items() if state.get(k, method if k == "method" else None) != v]
        if differ:
            why = f"made with other data, config or seed ({_mismatch(state, want, differ)})"
            raise UnusableCheckpoint(f"{self.path}: checkpoint was {why}; rerun without `resume` "
                                     f"(or with `overwrite`)", why)
        return state


def _mismatch(state: dict, want: dict, keys: list) -> str:
    """What differs between a checkpoint and the run that would resume it, for the refusal: the
    config's differing fields by name, the data as "data" (its fingerprint says nothing to a
    person; an older version named data by another hash, so this is also what an upgrade shows)."""
    def shown(values: dict, field: str) -> str:
        return repr(values[field]) if field in values else "'absent'"

    parts = []
    for k in keys:
        have, need = state.get(k), want[k]
        if k == "config" and isinstance(have, dict):
            fields = sorted(f for f in set(have) | set(need)
                            if f not in have or f not in need or have[f] != need[f])
            parts += [f"{f}: {shown(have, f)} there, {shown(need, f)} now" for f in fields]
        elif k == "fingerprint":
            parts.append("data: other images or labels, or a checkpoint from an older version")
        else:
            parts.append(f"{k}: {have!r} there, {need!r} now")
    return "; ".join(parts)


def rng_state(gen: torch.Generator) -> dict:
    return {"generator": gen.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(gen: torch.Generator, state: dict) -> None:
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch"])

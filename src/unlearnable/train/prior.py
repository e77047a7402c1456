"""Victims that start from a pretrained prior instead of random weights.

A real attacker rarely trains from scratch: fine-tuning or linear probing a backbone
pretrained on other data largely gets around unlearnable examples (Li et al., "When Priors
Backfire", ICLR 2026, arXiv 2603.04731). The prior is a checkpoint written by
``unlearnable pretrain`` or ``unlearnable train`` (``model.safetensors`` + ``model.json``,
read without pickle).

What is taken from it is the feature extractor g only: the head h is always new (seeded
like a scratch victim's), because the prior's classes need not be the victim's. Three modes:

* ``full``: every weight trains at the victim's learning rate.
* ``low-lr``: the backbone trains at ``backbone_lr_scale`` times the rate (0.1 by default),
  the new head at the full rate: the usual gentle fine-tune.
* ``linear-probe``: the backbone is frozen, weights and normalisation statistics both (its
  modules stay in eval mode while the head trains), so the victim is a linear classifier
  on the prior's features.

Which parameters are the head is found by asking the model, not by their names: a backward
pass through ``head(features(x).detach())`` reaches exactly the head's parameters.
"""

from __future__ import annotations

import types

import torch

from ..errors import UnlearnableError
from ..models.checkpoint import read_checkpoint
from ..models.registry import check_model_name

FINETUNE_MODES = ("full", "linear-probe", "low-lr")


def check_finetune(mode: str) -> str:
    if mode not in FINETUNE_MODES:
        raise UnlearnableError(f"unknown finetune mode {mode!r}; choose from {', '.join(FINETUNE_MODES)}")
    return mode


def head_parameter_names(model: torch.nn.Module, channels: int, size: int) -> set[str]:
    """Names of the parameters ``model.head`` uses (found by one backward pass on zeros)."""
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.zeros(2, channels, size, size, device=p.device, dtype=p.dtype)
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            model.head(model.features(x).detach()).float().sum().backward()
        names = {n for n, q in model.named_parameters() if q.grad is not None}
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    if not names:
        raise UnlearnableError(f"model {type(model).__name__} has no head parameters to train on a prior")
    return names


def _owner(name: str) -> str:
    """The module a parameter or buffer belongs to (``""`` for the root)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def load_backbone(model: torch.nn.Module, path, *, model_name: str, channels: int, size: int,
                  head_names: set[str]) -> dict:
    """Copy the prior's feature-extractor weights into ``model`` (the head stays as built).

    A prior of another architecture, channel count or image size, or with a backbone tensor
    missing or of another shape, is a one-line error. Returns the prior's ``model.json``.
    """
    try:
        meta, state, _ = read_checkpoint(path)
    except UnlearnableError as e:
        raise UnlearnableError(f"initial checkpoint: {e}") from None
    try:
        same = check_model_name(meta["model"]) == check_model_name(model_name)
    except UnlearnableError:
        same = False
    if not same:
        raise UnlearnableError(f"initial checkpoint {path} holds model {meta['model']!r}; the victim is "
                               f"{model_name!r} (choose the same model)")
    if meta["in_channels"] != channels or meta["image_size"] != size:
        raise UnlearnableError(f"initial checkpoint {path} was trained on {meta['in_channels']}-channel "
                               f"{meta['image_size']} px images; this data is {channels}-channel {size} px")
    head_modules = {_owner(n) for n in head_names}
    backbone = {k: v for k, v in model.state_dict().items() if _owner(k) not in head_modules}
    for k, v in backbone.items():
        if k not in state:
            raise UnlearnableError(f"initial checkpoint {path} has no tensor {k!r} for model {model_name!r}")
        if tuple(state[k].shape) != tuple(v.shape):
            raise UnlearnableError(f"initial checkpoint {path}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                                   f"model {model_name!r} needs {tuple(v.shape)}")
    with torch.no_grad():
        for k, v in backbone.items():
            v.copy_(state[k].to(v.dtype))
    return meta


def _stay_eval(self, mode: bool = True):
    """``train()`` of a frozen module: it stays in eval mode (bound per instance)."""
    return torch.nn.Module.train(self, False)


def freeze_backbone(model: torch.nn.Module, head_names: set[str]) -> None:
    """Linear probe: no backbone parameter trains and no backbone module leaves eval mode
    (batch-norm statistics are the prior's, not re-estimated on the protected images)."""
    head_modules = {_owner(n) for n in head_names}
    for name, p in model.named_parameters():
        if name not in head_names:
            p.requires_grad_(False)
    for name, m in model.named_modules():
        if name == "" or any(h == name or h.startswith(name + ".") for h in head_modules):
            continue  # the root, or a module holding (part of) the head
        m.train = types.MethodType(_stay_eval, m)
        m.eval()


def parameter_groups(model: torch.nn.Module, head_names: set[str], mode: str, backbone_lr_scale: float,
                     lr: float) -> list[dict]:
    """SGD parameter groups for a victim started from a prior, by fine-tune mode."""
    head = [p for n, p in model.named_parameters() if n in head_names]
    body = [p for n, p in model.named_parameters() if n not in head_names]
    if mode == "linear-probe":
        return [{"params": head}]
    if mode == "low-lr":
        return [{"params": body, "lr": lr * backbone_lr_scale}, {"params": head}]
    return [{"params": body + head}]


def start_from_prior(model: torch.nn.Module, path, *, model_name: str, mode: str, backbone_lr_scale: float,
                     lr: float, channels: int, size: int) -> tuple[list[dict], dict]:
    """Load the prior's backbone into the freshly built ``model`` and set it up for ``mode``.

    Returns the optimiser's parameter groups and what the result records about the prior
    (the path, the mode and the prior's own provenance from its ``model.json``).
    """
    check_finetune(mode)
    head_names = head_parameter_names(model, channels, size)
    meta = load_backbone(model, path, model_name=model_name, channels=channels, size=size, head_names=head_names)
    if mode == "linear-probe":
        freeze_backbone(model, head_names)
    record = {"init": str(path), "finetune": mode, "model": meta["model"]}
    if mode == "low-lr":
        record["backbone_lr_scale"] = backbone_lr_scale
    if isinstance(meta.get("provenance"), dict):
        record["provenance"] = meta["provenance"]
    return parameter_groups(model, head_names, mode, backbone_lr_scale, lr), record

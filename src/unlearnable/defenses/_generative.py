"""Shared pieces of the learned purification defenses (D-VAE, AVA, LE).

* spec options: ``name:key=value+key=value`` (``+`` separates options because ``,``
  separates defenses in a spec list), typed from the defense's config dataclass;
* tensors in and out of uint8 datasets, batched so that memory stays bounded;
* a seeded training loop (Adam, cosine learning rate, gradient clipping);
* purifier checkpoints as one ``.safetensors`` file whose metadata records what the
  weights are (kind, architecture, data fingerprint), loaded without pickle.

The diffusion denoiser that AVA and LE share is in :mod:`._denoiser`.

No pretrained weights can be downloaded here, so every network is trained on the
machine, at a scale the CPU allows; the docs (docs/defenses-generative.md) say where
that departs from the papers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import UnlearnableError
from ..fsutil import atomic_path
from ..progress import bar

# ---------------------------------------------------------------- spec options

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def parse_options(owner: str, arg: str | None, keys: dict[str, type], positional: str | None = None) -> dict:
    """``"epochs=10+cache=a.safetensors"`` -> ``{"epochs": 10, "cache": "a.safetensors"}``.

    ``keys`` maps option names to int/float/str/bool. A part without ``=`` is the
    ``positional`` option (when the defense has one). Errors are one line naming the option.
    """
    if arg is None:
        return {}
    out: dict = {}
    for part in arg.split("+"):
        part = part.strip()
        if not part:
            raise UnlearnableError(f"defense {owner!r}: empty option in {arg!r} (options are joined with '+')")
        key, eq, value = part.partition("=")
        if not eq:
            if positional is None or positional in out:
                raise UnlearnableError(f"defense {owner!r}: expected key=value, got {part!r}; "
                                       f"options: {', '.join(sorted(keys))}")
            key, value = positional, part
        key = key.strip().lower().replace("-", "_")
        if key not in keys:
            raise UnlearnableError(f"defense {owner!r}: unknown option {key!r}; choose from {', '.join(sorted(keys))}")
        if key in out:
            raise UnlearnableError(f"defense {owner!r}: option {key!r} given twice")
        out[key] = _convert(owner, key, value.strip(), keys[key])
    return out


def _convert(owner: str, key: str, value: str, kind: type):
    if kind is bool:
        if value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
    elif kind is str:
        if value:
            return value
    else:
        try:
            return kind(value)
        except ValueError:
            pass
    raise UnlearnableError(f"defense {owner!r}: option {key}={value!r} is not a valid {kind.__name__}")


def describe_spec(name: str, cfg, default, **extra) -> str:
    """The spec that rebuilds this defense: ``name`` plus its non-default options."""
    parts = [f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)
             if getattr(cfg, f.name) != getattr(default, f.name)]
    parts += [f"{k}={v}" for k, v in extra.items() if v is not None]
    return f"{name}:{'+'.join(parts)}" if parts else name


def config_keys(config_cls) -> dict[str, type]:
    """Option name -> type for every field of a config dataclass (types read from the defaults)."""
    return {f.name: type(f.default) for f in dataclasses.fields(config_cls)}


def build_config(owner: str, presets: dict, opts: dict, config_cls):
    """Pop ``preset`` (default "cpu") and the config fields from ``opts``; validate."""
    name = opts.pop("preset", "cpu")
    if name not in presets:
        raise UnlearnableError(f"defense {owner!r}: unknown preset {name!r}; choose from {', '.join(sorted(presets))}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    cfg = dataclasses.replace(presets[name], **{k: opts.pop(k) for k in list(opts) if k in fields})
    cfg.validate()
    return cfg


def check_config(owner: str, cfg, positive=(), unit=(), nonneg=()) -> None:
    for k in positive:
        if not getattr(cfg, k) > 0:
            raise UnlearnableError(f"{owner}: {k} must be positive, got {getattr(cfg, k)}")
    for k in unit:
        if not 0 < getattr(cfg, k) <= 1:
            raise UnlearnableError(f"{owner}: {k} must be in (0, 1], got {getattr(cfg, k)}")
    for k in nonneg:
        if not getattr(cfg, k) >= 0:
            raise UnlearnableError(f"{owner}: {k} must be >= 0, got {getattr(cfg, k)}")


# ---------------------------------------------------------------- tensors and batches

def check_images(owner: str, train) -> None:
    if len(train) == 0:
        raise UnlearnableError(f"defense {owner!r}: the training set has no images")


def to_unit(images: np.ndarray, device) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [0, 1] -> uint8 NHWC (rounded to the nearest level)."""
    return x.detach().float().clamp(0, 1).mul(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def map_batches(images: np.ndarray, fn, batch_size: int, device, desc: str) -> np.ndarray:
    """Apply ``fn(x_unit, rows)`` to ``images`` in batches; returns uint8 of the same shape.

    Only one batch lives on the device at a time, so memory is bounded by ``batch_size``.
    """
    out = np.empty_like(images)
    for i in bar(range(0, len(images), batch_size), desc=desc, unit="batch"):
        rows = slice(i, i + batch_size)
        out[rows] = to_uint8(fn(to_unit(images[rows], device), rows))
    return out


def pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Edge-pad bottom/right so that H and W are multiples of ``m`` (crop back afterwards)."""
    ph, pw = (-x.shape[-2]) % m, (-x.shape[-1]) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


def seeded_init(builder, seed: int) -> nn.Module:
    """Build a module with weights drawn from ``seed`` without touching the global RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder()


# ---------------------------------------------------------------- training loop

def fit(model: nn.Module, step_loss, x_uint8: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int,
        lr: float, generator: torch.Generator, grad_clip: float = 0.0, desc: str = "fit") -> list[dict]:
    """Adam with a cosine learning rate over ``epochs`` passes of shuffled mini-batches.

    ``x_uint8`` (N, C, H, W) and ``y`` live on the model's device; ``step_loss(x, y,
    epoch)`` returns ``(loss, {name: float tensor})`` for a float batch in [0, 1].
    Returns one row per epoch with the batch-size-weighted means of the named terms.
    """
    n = len(x_uint8)
    per_epoch = -(-n // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * per_epoch))
    history = []
    model.train()
    with bar(total=epochs * per_epoch, desc=desc, unit="batch") as pb:
        for epoch in range(epochs):
            sums: dict[str, torch.Tensor] = {}
            order = torch.randperm(n, generator=generator).to(x_uint8.device)
            for i in range(0, n, batch_size):
                idx = order[i:i + batch_size]
                loss, terms = step_loss(x_uint8[idx].float().div_(255.0), y[idx], epoch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
                sched.step()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0) + v.detach().float() * len(idx)
                pb.update()
            row = {"epoch": epoch + 1, **{k: round(float(v) / n, 6) for k, v in sums.items()}}
            history.append(row)
            pb.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "epoch"})
    model.eval()
    return history


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: str | Path, modules: dict[str, nn.Module], meta: dict) -> None:
    """Weights of ``modules`` (keys prefixed ``name.``) + JSON ``meta``, written atomically."""
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous()
               for name, m in modules.items() for k, v in m.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"unlearnable": json.dumps(meta, sort_keys=True)})


def load_checkpoint(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`; refuses another ``kind``."""
    path = Path(path)
    if not path.is_file():
        raise UnlearnableError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("unlearnable")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(raw) if raw else {}
    except Exception as e:  # noqa: BLE001 - any failure means an unusable file
        raise UnlearnableError(f"{path}: not a readable safetensors checkpoint ({str(e).splitlines()[0]})") from None
    if meta.get("kind") != kind:
        raise UnlearnableError(f"{path}: not a {kind} checkpoint (it says kind={meta.get('kind')!r})")
    return tensors, meta


def load_module(path, module: nn.Module, tensors: dict, prefix: str) -> nn.Module:
    state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise UnlearnableError(f"{path}: weights under {prefix!r} do not fit the network "
                               f"({str(e).splitlines()[0]})") from None
    return module

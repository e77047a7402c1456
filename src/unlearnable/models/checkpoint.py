"""Trained models on disk: ``model.safetensors`` (weights) + ``model.json`` (how to build it)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..errors import UnlearnableError
from ..fsutil import atomic_path, write_json
from .registry import build_model


def save_model(model, directory: str | Path, *, name: str, in_channels: int, num_classes: int, image_size: int,
               extra: dict | None = None, build_kwargs: dict | None = None) -> None:
    """``build_kwargs`` are the size overrides the model was built with (e.g. ``width``), kept so it reloads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.safetensors", suffix=".safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(directory / "model.json", {"model": name, "in_channels": in_channels, "num_classes": num_classes,
                                          "image_size": image_size, "build_kwargs": dict(build_kwargs or {}),
                                          **(extra or {})})


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """``(model.json, model.safetensors)`` of a checkpoint given as its folder or its weights file."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    meta_path, weights = directory / "model.json", directory / "model.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise UnlearnableError(f"{path}: no model.json + model.safetensors found")
    return meta_path, weights


def read_checkpoint(path: str | Path) -> tuple[dict, dict, Path]:
    """A checkpoint's checked ``model.json``, its weights as CPU tensors (safetensors, never
    pickle) and the weights file's path."""
    meta_path, weights = checkpoint_files(path)
    meta = read_model_json(meta_path)
    try:
        state = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a damaged file
        raise UnlearnableError(f"{weights}: not usable weights for model {meta['model']!r}: {_first_line(e)}") \
            from None
    return meta, state, weights


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load_model(path: str | Path, device="cpu"):
    """Load a model saved by :func:`save_model`; ``path`` is its folder or its .safetensors file."""
    meta, state, weights = read_checkpoint(path)
    model = build_model(meta["model"], meta["in_channels"], meta["num_classes"], meta["image_size"],
                        **meta.get("build_kwargs", {}))
    try:
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - a tensor missing, extra or of another shape
        raise UnlearnableError(f"{weights}: not usable weights for model {meta['model']!r}: {_first_line(e)}") \
            from None
    return model.to(device).eval(), meta


def read_model_json(path: Path) -> dict:
    """``model.json``, checked field by field (one-line error naming what is wrong)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UnlearnableError(f"cannot read {path}: {e}") from None
    if not isinstance(meta, dict):
        raise UnlearnableError(f"{path}: not a model description (expected a JSON object)")
    if not isinstance(meta.get("model"), str):
        raise UnlearnableError(f"{path}: 'model' must be a model name")
    for key in ("in_channels", "num_classes", "image_size"):
        v = meta.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 100_000:
            raise UnlearnableError(f"{path}: '{key}' must be a positive integer, got {v!r}")
    if not isinstance(meta.get("build_kwargs", {}), dict):
        raise UnlearnableError(f"{path}: 'build_kwargs' must be an object")
    return meta

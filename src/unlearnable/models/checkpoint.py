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


def load_model(path: str | Path, device="cpu"):
    """Load a model saved by :func:`save_model`; ``path`` is its folder or its .safetensors file."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    meta_path, weights = directory / "model.json", directory / "model.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise UnlearnableError(f"{path}: no model.json + model.safetensors found")
    meta = json.loads(meta_path.read_text())
    model = build_model(meta["model"], meta["in_channels"], meta["num_classes"], meta["image_size"],
                        **meta.get("build_kwargs", {}))
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError) as e:
        raise UnlearnableError(f"{weights}: weights do not fit model {meta['model']!r}: {e}") from None
    return model.to(device).eval(), meta

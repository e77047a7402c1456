"""Model registry: names in the paper's spelling, looked up case-insensitively."""

from __future__ import annotations

from typing import Callable

from ..errors import UnlearnableError
from .base import FeatureModel

_REGISTRY: dict[str, Callable[..., FeatureModel]] = {}


def model_key(name: str) -> str:
    """The registry spelling of a model name: case-insensitive, ``_`` = ``-``, no spaces."""
    return str(name).lower().replace("_", "-").replace(" ", "")


def is_model_name(name) -> bool:
    """Whether ``name`` (any spelling :func:`model_key` forgives) is registered."""
    return isinstance(name, str) and model_key(name) in _REGISTRY


def register_model(name: str, *aliases: str):
    def deco(fn):
        for n in (name, *aliases):
            _REGISTRY[model_key(n)] = fn
        return fn
    return deco


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def check_model_name(name: str) -> str:
    """The registry key of ``name`` (spelling and case forgiven); one-line error when unknown."""
    if not is_model_name(name):
        raise UnlearnableError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
    return model_key(name)


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, **kwargs) -> FeatureModel:
    """Build a registered model for the given input channels, classes and image size."""
    fn = _REGISTRY.get(model_key(name))
    if fn is None:
        raise UnlearnableError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
    try:
        return fn(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kwargs)
    except TypeError as e:  # a misspelled size option: name it in one line
        raise UnlearnableError(f"model {name!r}: bad option(s) {sorted(kwargs)}: {e}") from None

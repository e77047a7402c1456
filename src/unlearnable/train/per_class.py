"""Clean test accuracy split by protection: protected classes against the other classes.

The one-class setting of the MI-UE paper (Zhu et al., arXiv:2603.03725, Appendix G.1,
Tables 16-18) reports a victim's accuracy on the test images of the protected class
("unlearnable class") and on those of all other classes. Both are plain accuracies over
the test images of each group (not means of per-class accuracies), computed with the
shared :func:`~unlearnable.train.loops.evaluate` loop (eval mode, batched, no augmentation).
"""

from __future__ import annotations

import os

import torch

from ..data.dataset import ImageDataset
from ..data.poisoned import PoisonedDataset, is_poisoned_dir, read_manifest
from .loops import TensorData, evaluate


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def split_accuracy(model: torch.nn.Module, test: ImageDataset | TensorData, classes, *, batch_size: int = 256,
                   bf16: bool = False, channels_last: bool = False) -> dict:
    """Accuracy of ``model`` on the test images whose label is in ``classes`` and on the rest.

    ``test`` is an :class:`ImageDataset` (moved to the model's device) or a
    :class:`TensorData` (used where it is). Returns ``{"protected": acc, "other": acc,
    "n_protected": n, "n_other": n}``; an accuracy is None when its group has no image.
    """
    data = test if isinstance(test, TensorData) else TensorData.from_dataset(test, _model_device(model))
    inside = torch.isin(data.y, torch.as_tensor(list(classes), dtype=data.y.dtype, device=data.y.device))
    out = {}
    for name, mask in (("protected", inside), ("other", ~inside)):
        part = TensorData(data.x[mask], data.y[mask])
        out[name] = evaluate(model, part, batch_size=batch_size, bf16=bf16, channels_last=channels_last) \
            if len(part) else None
        out[f"n_{name}"] = len(part)
    return out


def protected_classes_of(source) -> list[int] | None:
    """The per-class protection of ``source``: a :class:`PoisonedDataset`, a manifest dict,
    or a path/data spec (a protected dataset directory is read; anything else has none)."""
    if isinstance(source, PoisonedDataset):
        return source.protected_classes
    if isinstance(source, dict):
        return (source.get("selection") or {}).get("protected_classes")
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source) and is_poisoned_dir(source):
        return protected_classes_of(read_manifest(source))
    return None


def protection_metrics(model: torch.nn.Module, test: ImageDataset | TensorData, source, **kw) -> dict:
    """``{"test_acc_protected_classes": ..., "test_acc_other_classes": ...}`` when ``source``
    (see :func:`protected_classes_of`) protects whole classes, else ``{}``.

    ``model`` maps images in [0, 1] to logits; ``kw`` goes to :func:`split_accuracy`.
    Accuracies are rounded to 5 decimals like the training history.
    """
    classes = protected_classes_of(source)
    if not classes:
        return {}
    acc = split_accuracy(model, test, classes, **kw)
    r = lambda a: None if a is None else round(float(a), 5)  # noqa: E731
    return {"test_acc_protected_classes": r(acc["protected"]), "test_acc_other_classes": r(acc["other"])}


__all__ = ["split_accuracy", "protection_metrics", "protected_classes_of"]

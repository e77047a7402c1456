"""Penultimate features of a trained model for two aligned image sets (clean, poisoned)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import ImageDataset
from ..errors import UnlearnableError
from ..train.loops import TensorData, batches


@torch.no_grad()
def extract_features(model, ds: ImageDataset, *, batch_size: int = 256, device=None) -> np.ndarray:
    """``model.features`` of every image of ``ds`` in order, eval mode, batched: (N, D) float32.

    The model's train/eval mode is restored afterwards.
    """
    if not hasattr(model, "features"):
        raise UnlearnableError(f"{type(model).__name__} has no features(x) method (penultimate layer)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        data = TensorData.from_dataset(ds, device)
        out = []
        for idx in batches(len(data), batch_size, None, device):
            x, _ = data.batch(idx)
            z = model.features(x)
            out.append(z.float().reshape(z.shape[0], -1).cpu())
        if not out:
            raise UnlearnableError("no images to extract features from")
        return torch.cat(out).numpy()
    finally:
        model.train(was_training)


def paired_features(model, clean: ImageDataset, poisoned: ImageDataset, *, batch_size: int = 256,
                    device=None) -> tuple[np.ndarray, np.ndarray]:
    """Features of aligned clean and poisoned images (row i of each is the same image)."""
    if len(clean) != len(poisoned) or clean.images.shape != poisoned.images.shape:
        raise UnlearnableError(f"clean and poisoned data are not aligned: {clean.images.shape} vs "
                               f"{poisoned.images.shape}")
    if not np.array_equal(clean.labels, poisoned.labels):
        raise UnlearnableError("clean and poisoned data have different labels row by row (not aligned)")
    return (extract_features(model, clean, batch_size=batch_size, device=device),
            extract_features(model, poisoned, batch_size=batch_size, device=device))

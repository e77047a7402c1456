"""Linear separability of the noise and of the poisoned images (Table 21 of the paper).

A multinomial logistic regression (one linear layer, no augmentation, as in Zhu et al.,
2024) is fitted on (noise only, label) and on (poisoned image, label); the training
accuracy it reaches says how linearly separable each set is. Inputs are flattened and
standardised per pixel (an affine map, so separability is unchanged; it only makes the
optimisation well conditioned). Full-batch L-BFGS, deterministic.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UnlearnableError
from .estimators.base import _torch_threads


def linear_train_accuracy(x: np.ndarray, labels: np.ndarray, *, steps: int = 200, l2: float = 0.0,
                          seed: int = 0, num_classes: int | None = None) -> float:
    """Training accuracy of a linear classifier fitted to ``x`` (N, ...) and ``labels``."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    y = np.asarray(labels, dtype=np.int64)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise UnlearnableError(f"separability: {x.shape[0]} inputs but {y.shape[0]} labels")
    k = int(num_classes or (y.max() + 1))
    mu, sd = x.mean(0), x.std(0)
    xs = torch.from_numpy((x - mu) / np.where(sd > 0, sd, 1.0))
    yt = torch.from_numpy(y)
    torch.manual_seed(seed)
    lin = torch.nn.Linear(xs.shape[1], k)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=steps, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xs), yt)
        if l2:
            loss = loss + 0.5 * l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss
    # small problems run single-threaded: intra-op threads only add synchronisation there
    with _torch_threads(1 if xs.numel() < 20_000_000 else torch.get_num_threads()):
        opt.step(closure)
        with torch.no_grad():
            return float((lin(xs).argmax(1) == yt).float().mean())


def separability_report(clean_images: np.ndarray, poisoned_images: np.ndarray, labels: np.ndarray, *,
                        steps: int = 200, include_clean: bool = True) -> dict:
    """Training accuracy of a linear model on the noise alone, the poisoned and the clean images.

    Images are uint8 (N, H, W, C); the noise is ``poisoned - clean`` in [0, 1] pixel units.
    """
    if clean_images.shape != poisoned_images.shape:
        raise UnlearnableError(f"separability: clean {clean_images.shape} and poisoned {poisoned_images.shape} differ")
    c = clean_images.astype(np.float32) / 255.0
    p = poisoned_images.astype(np.float32) / 255.0
    k = int(np.max(labels)) + 1
    out = {"noise_train_acc": linear_train_accuracy(p - c, labels, steps=steps, num_classes=k),
           "poisoned_train_acc": linear_train_accuracy(p, labels, steps=steps, num_classes=k)}
    if include_clean:
        out["clean_train_acc"] = linear_train_accuracy(c, labels, steps=steps, num_classes=k)
    out.update({"classifier": "linear (logistic regression, L-BFGS, no augmentation)", "steps": steps,
                "n": int(len(labels))})
    return out

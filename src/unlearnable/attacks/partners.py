"""Each class's partner (its nearest class) and a fixed model trained on the clean images to
aim a poison at it: the parts of MI-UE-G's partner term and of its per-image refinement
(:mod:`.mi_ue_gen`).

Why the nearest class: a targeted poison moves a shallow victim's boundary between y and
its target only as far as an 8/255 change reaches, so a near target costs it far more than
the registry's ``y + 1`` (on Fashion-MNIST that sends T-shirts to trousers). Measured with
``bench/ap_cycle.py`` (docs/mi-ue.md): targeted AP against a 2-NN costs a 2-NN victim about
3 points with ``y + 1`` and 12-13 with these pairs. Why a fully connected model: a poison
aimed at the CNN with the same targets costs the MLPs under 1 point.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..progress import bar
from ..runtime import autocast, to_model_input
from ..train.loops import batches, num_batches
from .pgd import pgd
from .source import SourceRun


def class_means(flat: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, D) the mean row of each class of ``flat`` (N, D), in its dtype (zero for an absent class)."""
    onehot = torch.nn.functional.one_hot(y, num_classes).to(flat.dtype)
    return (onehot.T @ flat) / onehot.sum(0).clamp(min=1)[:, None]


def class_mean_distances(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) squared Euclidean distances between the class-mean images (float64)."""
    means = class_means(x.flatten(1).double(), y, num_classes)
    return torch.cdist(means, means) ** 2


def greedy_pairs(dist: torch.Tensor) -> list[tuple[int, int]]:
    """Disjoint class pairs from a (K, K) distance matrix, greedily: the closest pair first
    (ties in index order), then the closest pair of classes both still unpaired."""
    k = len(dist)
    pairs, paired = [], set()
    for _, a, b in sorted((dist[a, b].item(), a, b) for a in range(k) for b in range(a + 1, k)):
        if a not in paired and b not in paired:
            pairs.append((a, b))
            paired |= {a, b}
    return pairs


def nearest_partners(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) each class's partner: the classes paired greedily by class-mean distance
    (:func:`greedy_pairs`), so that partners swap. With an odd number of classes the one
    left over takes its nearest class (which keeps its own partner)."""
    dist = class_mean_distances(x, y, num_classes)
    partner = [-1] * num_classes
    for a, b in greedy_pairs(dist):
        partner[a], partner[b] = b, a
    for c in range(num_classes):
        if partner[c] < 0:
            partner[c] = min((k for k in range(num_classes) if k != c), key=lambda k: dist[c, k].item())
    return torch.tensor(partner, dtype=torch.long, device=y.device)


def clean_trained_model(name: str, cfg, train, *, seed: int, model: str, epochs: int) -> torch.nn.Module:
    """``model`` trained ``epochs`` epochs on the clean images without augmentation (SGD,
    momentum, cosine to ``cfg.lr_min``; batch 256, rate 0.1 and weight decay 5e-4, the
    settings of the measured runs), returned in eval mode with its weights frozen."""
    src_cfg = replace(cfg, model=model, batch_size=256, lr=0.1, weight_decay=5e-4)
    run = SourceRun(name, src_cfg, train, seed=seed, schedule="cosine", schedule_epochs=epochs)
    with bar(total=epochs * num_batches(len(run.data), src_cfg.batch_size), desc=name, unit="batch") as pb:
        for _ in range(epochs):
            run.train_pass(None, on_batch=pb.update)
            run.sched.step()
    net = run.model.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def refine_towards_partners(net: torch.nn.Module, data, delta: torch.Tensor, partner: torch.Tensor, *, eps: float,
                            steps: int, chunk: int, channels_last: bool = False, bf16: bool = False) -> torch.Tensor:
    """Per-image targeted PGD from ``delta`` (N, C, H, W on the CPU, as a generator writes it):
    ``steps`` signed-gradient steps of 2.5 eps / steps (``ap``'s rule) lowering the frozen
    ``net``'s cross-entropy towards each image's partner class ``partner[y]``, projected to the
    budget and the pixel range. Deterministic (no random start); ``chunk`` images at a time.
    Returns a new CPU tensor."""
    out = torch.empty_like(delta)
    device = data.x.device
    for idx in batches(len(data), chunk, None, device):  # in order, unshuffled
        x, y = data.batch(idx)
        rows = idx.cpu()
        target = partner[y]

        def loss(inp):
            with autocast(device, bf16):
                logits = net(to_model_input(inp, channels_last))
            return F.cross_entropy(logits.float(), target, reduction="sum")  # a sum: no gradient shrinks with the chunk
        out[rows] = pgd(loss, x, delta[rows].to(device), steps=steps, step_size=2.5 * eps / steps, eps=eps).cpu()
    return out

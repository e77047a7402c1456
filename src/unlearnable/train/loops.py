"""The training and evaluation loops shared by victims and attack source models.

Per batch the loop does only tensor work on the model's device: an index gather from the
uint8 images, the optional perturbation, augmentation, batch defenses (Cutout, CutMix,
Mixup, UEraser) and ``perturb`` hook (adversarial training), one forward/backward/step.
Loss and accuracy are accumulated in device tensors and read once per epoch, so the loop
never waits for the device inside an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime import autocast, to_model_input


@dataclass
class TensorData:
    """Images as uint8 NCHW on the compute device, labels as int64: converted per batch."""

    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)

    @classmethod
    def from_dataset(cls, ds, device) -> "TensorData":
        x = torch.from_numpy(ds.images).permute(0, 3, 1, 2).contiguous().to(device)
        return cls(x, torch.from_numpy(ds.labels).to(device))

    def __len__(self):
        return int(self.y.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx].float().div_(255.0), self.y[idx]


def batches(n: int, batch_size: int, generator: torch.Generator | None, device, drop_last=False,
            stratify: torch.Tensor | None = None):
    """Index batches over ``n`` items, shuffled when a generator is given. With ``stratify``
    (the items' labels) and a generator, every batch holds each class in proportion to its
    share of the items, within one (:func:`class_interleaved_order`)."""
    if stratify is not None and generator is not None:
        order = class_interleaved_order(stratify, generator)
    else:
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order = order.to(device)
    stop = n - (n % batch_size) if (drop_last and n >= batch_size) else n
    for i in range(0, stop, batch_size):
        yield order[i:i + batch_size]


def class_interleaved_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of ``range(len(labels))`` that spreads every class evenly.

    Each class's items are shuffled and given the keys ``(rank + u_c) / n_c`` (rank within
    the class, ``u_c`` one uniform offset per class, ``n_c`` the class's count), then all
    items are sorted by key. A class's keys are evenly spaced ``1 / n_c`` apart, so any run
    of ``B`` consecutive items spans about ``B / n`` of the key range and holds
    ``B * n_c / n`` items of class c, rounded up or down: a contrastive loss sees every
    class in every batch, however small the batch. The per-class offsets stop the classes
    from always appearing in the same order.
    """
    n = len(labels)
    perm = torch.randperm(n, generator=generator)
    y = labels.cpu()[perm]
    counts = torch.bincount(y)
    by_class = torch.argsort(y, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.float64)
    rank[by_class] = (torch.arange(n) - starts[y[by_class]]).double()
    offset = torch.rand(len(counts), generator=generator, dtype=torch.float64)
    key = (rank + offset[y]) / counts[y].double()
    return perm[torch.argsort(key, stable=True)]


def num_batches(n: int, batch_size: int, drop_last=False) -> int:
    return n // batch_size if (drop_last and n >= batch_size) else -(-n // batch_size)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """int64 labels from labels or a (B, K) soft-label matrix (its largest entry)."""
    return target if target.dtype == torch.long else target.argmax(1)


def train_epoch(model, optimizer, data: TensorData, *, batch_size: int, generator: torch.Generator,
                augment=None, delta: torch.Tensor | None = None, bf16=False, channels_last=False,
                on_batch=None, max_batches: int | None = None, perturb=None,
                batch_defenses=(), step=None) -> tuple[float, float]:
    """One pass of cross-entropy SGD; ``delta`` (float NCHW) is added to the images when given.

    ``max_batches`` stops the pass early (the first batches of a fresh shuffle: sampling
    without replacement). ``batch_defenses`` are :class:`~unlearnable.defenses.Defense`
    objects of kind "batch", applied in order after augmentation; each maps
    ``(x, target)`` to a new pair, where the target may become a (B, K) soft-label matrix
    (Mixup, CutMix), which the loss accepts as is. ``perturb(model, x, target)``, when
    given, replaces each batch last, just before the step (adversarial training); it must
    leave the model in train mode. ``step(model, optimizer, x, target)``, when given,
    replaces the SGD step and returns (sum of losses, number correct) over the batch
    (the data-parallel step of :mod:`unlearnable.sharding`). Returns (mean loss,
    accuracy) over the batches seen, measured on the inputs the model was trained on
    (against the largest soft label).
    """
    device = data.x.device
    if step is None:
        def step(model, optimizer, x, target):
            with autocast(device, bf16):
                logits = model(to_model_input(x, channels_last))
            loss = F.cross_entropy(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.detach() * len(x), (logits.detach().argmax(1) == hard_labels(target)).sum()

    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    for b, idx in enumerate(batches(len(data), batch_size, generator, device)):
        if max_batches is not None and b >= max_batches:
            break
        x, target = data.batch(idx)
        if delta is not None:
            x = (x + delta[idx]).clamp_(0, 1)
        if augment is not None:
            x = augment(x, generator)
        if batch_defenses:
            with autocast(device, bf16):  # UEraser scores its copies with the model
                for d in batch_defenses:
                    x, target = d.batch(model, x, target, generator)
        if perturb is not None:
            x = perturb(model, x, target)
        seen += len(idx)
        loss_sum, right = step(model, optimizer, x, target)
        total_loss += loss_sum
        correct += right
        if on_batch is not None:
            on_batch()
    n = max(1, seen)
    return float(total_loss) / n, float(correct) / n


@torch.no_grad()
def evaluate(model, data: TensorData, *, batch_size: int = 256, bf16=False, channels_last=False,
             delta: torch.Tensor | None = None) -> float:
    """Accuracy of ``model`` on ``data`` (eval mode, no augmentation), on ``x + delta`` when given."""
    model.eval()
    correct = torch.zeros((), device=data.x.device, dtype=torch.long)
    for idx in batches(len(data), batch_size, None, data.x.device):
        x, y = data.batch(idx)
        if delta is not None:
            x = (x + delta[idx]).clamp_(0, 1)
        with autocast(data.x.device, bf16):
            logits = model(to_model_input(x, channels_last))
        correct += (logits.argmax(1) == y).sum()
    return int(correct) / max(1, len(data))


@torch.no_grad()
def predict(model, images: np.ndarray, channels_last: bool) -> np.ndarray:
    """The class ``model`` gives every uint8 NHWC image (eval mode, 512 at a time), as int64."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), 512):
        x = torch.from_numpy(images[i:i + 512]).permute(0, 3, 1, 2).float().div_(255.0).to(device)
        out.append(model(to_model_input(x, channels_last)).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def _params(model_or_groups):
    """A model's parameters, or the parameter groups given as they are."""
    return model_or_groups.parameters() if isinstance(model_or_groups, torch.nn.Module) else model_or_groups


def sgd_cosine(model, *, lr: float, momentum: float, weight_decay: float, epochs: int, lr_min: float = 1e-6,
               nesterov: bool = False):
    """SGD with momentum and weight decay, cosine-annealed per epoch to ``lr_min``. ``model``
    is a module or a list of parameter groups (each group's own ``lr`` is annealed the same way)."""
    opt = torch.optim.SGD(_params(model), lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=nesterov)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=lr_min)
    return opt, sched


def sgd_multistep(model, *, lr: float, momentum: float, weight_decay: float, milestones, gamma: float = 0.1):
    """SGD with momentum and weight decay, the rate multiplied by ``gamma`` at each milestone epoch.
    ``model`` is a module or a list of parameter groups."""
    opt = torch.optim.SGD(_params(model), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
    return opt, sched

"""Data-parallel sharding: each batch split over DDP ranks, or the same arithmetic in one process.

Under ``torchrun`` (or :func:`unlearnable.distributed.spawn_local`) with W processes, each batch of B images is
split into W contiguous shards, one per rank:

- **source-model / victim step**: every rank draws the same global batch and the same
  augmentation (one seeded generator per rank, identical streams), applies it to the
  whole batch, keeps its shard, and back-propagates ``W/B * sum of its cross-entropies``
  through ``DistributedDataParallel``, which averages the gradients (the mean loss of
  the whole batch). BatchNorm uses the statistics of the rank's shard; after every step
  the running statistics are averaged over the ranks (all-reduce), so every rank keeps
  identical weights and buffers. (SyncBatchNorm would use whole-batch statistics but
  works only on GPUs; per-shard statistics make the CPU gloo path and the GPU path the
  same algorithm.)
- **poison update (MI-UE)**: rank r updates the poisons of its shard of each PGD batch.
  MI-UE's loss couples the whole batch, so each PGD step all-gathers the batch's
  features; a rank's own rows keep their graph and the gradient reaching its
  perturbations is the exact partial derivative of the whole-batch loss. PGD shards are
  aligned to ``forward_chunk`` so every feature chunk is the one a single process computes.
  After each pass the updated poisons are all-gathered, so the next training pass sees them.

**Equivalence.** ``shards: W`` in the attack config (``torchrun`` sets it to the world
size) makes *one* process run the same arithmetic sequentially: per shard it computes
the gradient, divides it by W (as DDP does), sums the shards in rank order, and averages
the BatchNorm buffers each shard produced. With W = 2 this is bit-identical to DDP on 2
ranks: the per-shard work is the same computation, division by 2 is exact, and a sum of
two floats does not depend on order (tested with gloo, ``tests/test_ddp.py``), provided
every process uses the same number of intra-op threads (CPU kernels split their sums by
thread, so 1 and 2 threads give different last bits). With W > 2
the all-reduce may add the W gradients in another order than rank order, which changes
the last bit of some sums; sign steps in PGD can then flip for gradients that are
exactly balanced, so equality is only guaranteed for W = 2.

The PGD pass itself gives the same poisons as the plain single-process pass (``shards:
1``) for the same source model. The source-model training differs from ``shards: 1``
because BatchNorm normalises each shard with its own statistics and the batch gradient
is summed as W partial sums; docs/experiments.md reports how much the poisons differ.

This module is below attacks/ and train/: :class:`attacks.source.SourceRun` and
:func:`train.ddp.train_victim_ddp` take a :class:`Sharding` (None: the plain one-process
run); the torchrun entry points are in :mod:`unlearnable.distributed`.
"""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import UnlearnableError
from .runtime import autocast, to_model_input


def world() -> tuple[int, int]:
    """(rank, world size) of the process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_shards(b: int, w: int) -> list[tuple[int, int]]:
    """Split ``b`` rows into ``w`` contiguous shards whose sizes differ by at most one."""
    if b < w:
        raise UnlearnableError(f"a batch of {b} images cannot be split over {w} shards (every shard needs an image "
                               f"for BatchNorm); choose a batch size and subset so every batch has >= {w}")
    q, r = divmod(b, w)
    bounds, s = [], 0
    for i in range(w):
        e = s + q + (1 if i < r else 0)
        bounds.append((s, e))
        s = e
    return bounds


def pgd_shards(b: int, w: int, chunk: int) -> list[tuple[int, int]]:
    """Split ``b`` rows into ``w`` contiguous shards made of whole ``chunk``-row blocks
    (the last block may be short; a shard may be empty)."""
    n_chunks = -(-b // chunk)
    q, r = divmod(n_chunks, w)
    bounds, c = [], 0
    for i in range(w):
        k = q + (1 if i < r else 0)
        bounds.append((min(c * chunk, b), min((c + k) * chunk, b)))
        c += k
    return bounds


def _float_buffers(model):
    return [b for b in model.buffers() if b.dtype.is_floating_point]


class Sharding:
    """Each batch split over ``shards`` shards: across DDP ranks, or sequentially in one process."""

    def __init__(self, shards: int, forward_chunk: int | None = None):
        if int(shards) != shards or shards < 1:
            raise UnlearnableError(f"shards must be a positive integer, got {shards}")
        self.w = int(shards)
        self.rank, size = world()
        self.distributed = size > 1
        if self.distributed and size != self.w:
            raise UnlearnableError(f"shards={self.w} but the process group has {size} ranks: they must match")
        self.chunk = forward_chunk
        self._ddp = None
        self.batch_y = None
        self.batch_bounds = None

    @property
    def writer(self) -> bool:
        """Whether this process writes checkpoints and outputs (rank 0)."""
        return self.rank == 0

    # -- one SGD step -----------------------------------------------------------------------
    def _wrapped(self, model):
        if self._ddp is None or self._ddp.module is not model:
            from torch.nn.parallel import DistributedDataParallel as DDP
            dev = next(model.parameters()).device
            ids = [dev.index] if dev.type == "cuda" else None
            # Buffers are averaged after each step instead of copied from rank 0 before each forward.
            sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                    else {"broadcast_buffers": False})
            self._ddp = DDP(model, device_ids=ids, **sync)
        return self._ddp

    def step(self, model, optimizer, x, target, *, bf16=False, channels_last=False) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on the whole batch (x, target); returns (sum of losses, correct) over it."""
        b, w = len(target), self.w
        bounds = train_shards(b, w)
        scale = w / b
        if self.distributed:
            s, e = bounds[self.rank]
            net = self._wrapped(model)
            with autocast(x.device, bf16):
                logits = net(to_model_input(x[s:e], channels_last))
            ce = F.cross_entropy(logits.float(), target[s:e], reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            (ce * scale).backward()  # DDP: gradient / W, summed over ranks
            optimizer.step()
            for buf in _float_buffers(model):
                dist.all_reduce(buf)
                buf.div_(w)
            stats = torch.stack([ce.detach(), (logits.detach().argmax(1) == target[s:e]).sum().to(ce.dtype)])
            dist.all_reduce(stats)
            return stats[0], stats[1]
        params = [p for p in model.parameters() if p.requires_grad]
        bufs = list(model.buffers())
        pre = [t.clone() for t in bufs]
        total, summed, after_first, float_sum = None, None, None, None
        correct = torch.zeros((), device=x.device)
        for r, (s, e) in enumerate(bounds):
            if r:  # every shard starts from the buffers the step started with, as every rank does
                for t, p0 in zip(bufs, pre):
                    t.copy_(p0)
            with autocast(x.device, bf16):
                logits = model(to_model_input(x[s:e], channels_last))
            ce = F.cross_entropy(logits.float(), target[s:e], reduction="sum")
            grads = torch.autograd.grad(ce * scale, params)
            grads = [g / w for g in grads] if w > 1 else list(grads)
            summed = grads if summed is None else [a + g for a, g in zip(summed, grads)]
            total = ce.detach() if total is None else total + ce.detach()
            correct += (logits.detach().argmax(1) == target[s:e]).sum()
            fl = [t.clone() for t in _float_buffers(model)]
            float_sum = fl if float_sum is None else [a + t for a, t in zip(float_sum, fl)]
            if r == 0:
                after_first = [t.clone() for t in bufs]
        optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, summed):
            p.grad = g
        optimizer.step()
        for t, v in zip(bufs, after_first):
            t.copy_(v)
        for t, v in zip(_float_buffers(model), float_sum):
            t.copy_(v / w if w > 1 else v)
        return total, correct

    def step_fn(self, *, bf16=False, channels_last=False):
        """:meth:`step` as the ``step`` of :func:`unlearnable.train.loops.train_epoch`, which
        then splits every batch over the shards: the same batches, perturbation and
        augmentation (drawn for the whole batch)."""
        def step(model, optimizer, x, target):
            return self.step(model, optimizer, x, target, bf16=bf16, channels_last=channels_last)
        return step

    # -- scoring ----------------------------------------------------------------------------
    def eval_bounds(self, n: int) -> list[tuple[int, int]]:
        """The row ranges of ``n`` rows this process scores: its own shard across ranks, every
        shard in turn in one process (each scored separately, then the counts summed)."""
        bounds = train_shards(n, self.w) if n >= self.w else [(0, n)] + [(n, n)] * (self.w - 1)
        return [bounds[self.rank]] if self.distributed else bounds

    def all_sum(self, t: torch.Tensor, device) -> torch.Tensor:
        """``t`` summed over the ranks (unchanged in one process)."""
        if self.distributed:
            t = t.to(device)
            dist.all_reduce(t)
        return t

    # -- source-model attacks (hooks of attacks.source.SourceRun) ----------------------------
    def update_poisons(self, run, update, batch_indices, *, on_batch=None, start_batch=0, stop_batch=None):
        """Rank r runs ``update`` on its shard of every batch of ``batch_indices``; then the
        poisons are all-gathered."""
        if run.classwise:
            raise UnlearnableError(f"{run.name}: DDP poison updates support sample-wise perturbations only")
        owned = [[] for _ in range(self.w)]
        for b, idx in enumerate(batch_indices):
            if b < start_batch:
                continue
            if stop_batch is not None and b >= stop_batch:
                break
            bounds = pgd_shards(len(idx), self.w, self.chunk or len(idx))
            for q, (s, e) in enumerate(bounds):
                owned[q].append(idx[s:e])
            s, e = bounds[self.rank]
            x, y = run.data.batch(idx)
            self.batch_y, self.batch_bounds = y, bounds
            mine = idx[s:e]
            run.perturbation[mine] = update(x[s:e], y[s:e], run.expand(mine))
            if on_batch is not None:
                on_batch()
        self.batch_y = self.batch_bounds = None
        empty = torch.zeros(0, dtype=torch.long, device=run.device)
        self._gather_rows(run.perturbation, [torch.cat(o) if o else empty for o in owned])

    def _gather_rows(self, param: torch.Tensor, owned: list[torch.Tensor]) -> None:
        """Every rank sends the rows it updated; every rank writes all of them into ``param``."""
        m = max(len(o) for o in owned)
        if m == 0:
            return
        send = param.new_zeros((m, *param.shape[1:]))
        mine = owned[self.rank]
        send[:len(mine)] = param[mine]
        recv = [torch.empty_like(send) for _ in range(self.w)]
        dist.all_gather(recv, send)
        for q, rows in enumerate(owned):
            if q != self.rank and len(rows):
                param[rows] = recv[q][:len(rows)]

    def gather(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole PGD batch's features (this rank's rows keep their graph) and labels."""
        if not self.distributed or self.batch_bounds is None:
            return z, y
        sizes = [e - s for s, e in self.batch_bounds]
        m = max(sizes)
        send = z.new_zeros((m, *z.shape[1:]), dtype=torch.float32)
        send[:len(z)] = z.detach().float()
        recv = [torch.empty_like(send) for _ in range(self.w)]
        dist.all_gather(recv, send)
        parts = [z if q == self.rank else recv[q][:sizes[q]].to(z.dtype) for q in range(self.w)]
        return torch.cat(parts), self.batch_y


def sharding_for(cfg) -> Sharding | None:
    """The sharding a source-model attack config asks for (``shards``), or None for the plain run."""
    shards = getattr(cfg, "shards", None)
    if shards is None:
        return None
    if shards == 1 and world()[1] == 1:
        return None
    if world()[1] > 1 and getattr(cfg, "pgd_augment", "none") not in (None, "none"):
        raise UnlearnableError("DDP generation needs pgd_augment 'none' (random transforms inside PGD would be "
                               "drawn per shard, not for the whole batch)")
    return Sharding(shards, getattr(cfg, "forward_chunk", None))

"""Data-parallel (DDP) poison generation and victim training, and their one-process twin.

Under ``torchrun`` (or :func:`spawn_local`) with W processes, each batch of B images is
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

Entry points (``torchrun --nproc_per_node=N -m unlearnable.distributed ...``)::

    poison --method mi-ue --data SPEC --out DIR [--subset N] [--seed S] [--preset P] [--resume] [...]
    train  --data DIR --model cnn --out OUT [--preset cpu] [--epochs N] [--seed S] [...]
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

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

    def train_epoch(self, model, optimizer, data, *, batch_size: int, generator, augment=None, delta=None,
                    bf16=False, channels_last=False, on_batch=None, max_batches=None) -> tuple[float, float]:
        """:func:`unlearnable.train.loops.train_epoch` with every batch split over the shards:
        the same batches, perturbation and augmentation (drawn for the whole batch)."""
        from .train.loops import train_epoch

        def step(model, optimizer, x, target):
            return self.step(model, optimizer, x, target, bf16=bf16, channels_last=channels_last)

        return train_epoch(model, optimizer, data, batch_size=batch_size, generator=generator, augment=augment,
                           delta=delta, on_batch=on_batch, max_batches=max_batches, step=step)

    @torch.no_grad()
    def evaluate(self, model, data, *, batch_size: int = 256, bf16=False, channels_last=False) -> float:
        """Accuracy on ``data``: each shard of the rows scored separately, counts summed."""
        from .train.loops import TensorData, evaluate
        model.eval()
        n = len(data)
        bounds = train_shards(n, self.w) if n >= self.w else [(0, n)] + [(n, n)] * (self.w - 1)
        mine = [bounds[self.rank]] if self.distributed else bounds
        correct = torch.zeros((), dtype=torch.float64)
        for s, e in mine:
            if e > s:
                part = TensorData(data.x[s:e], data.y[s:e])
                correct += evaluate(model, part, batch_size=batch_size, bf16=bf16, channels_last=channels_last) * (e - s)
        if self.distributed:
            correct = correct.to(data.x.device)
            dist.all_reduce(correct)
        return float(correct.round()) / max(1, n)

    # -- source-model attacks (hooks of attacks.source.SourceRun) ----------------------------
    def train_pass(self, run, augment=None, *, delta=None, max_batches=None, perturb=None, on_batch=None):
        if perturb is not None:
            raise UnlearnableError(f"{run.name}: sharded (DDP) source training does not support adversarial training")
        cfg = run.cfg
        return self.train_epoch(run.model, run.opt, run.data, batch_size=cfg.batch_size, generator=run.gen,
                                augment=augment, delta=delta, bf16=cfg.bf16, channels_last=cfg.channels_last,
                                on_batch=on_batch, max_batches=max_batches)

    def update_poisons(self, run, update, *, shuffle=True, on_batch=None, start_batch=0, stop_batch=None):
        """Rank r runs ``update`` on its shard of every batch; then the poisons are all-gathered."""
        from .train.loops import batches
        if run.classwise:
            raise UnlearnableError(f"{run.name}: DDP poison updates support sample-wise perturbations only")
        gen = run.gen if shuffle else None
        owned = [[] for _ in range(self.w)]
        for b, idx in enumerate(batches(len(run.data), run.cfg.batch_size, gen, run.device)):
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
            run.param[mine] = update(x[s:e], y[s:e], run.expand(mine))
            if on_batch is not None:
                on_batch()
        self.batch_y = self.batch_bounds = None
        empty = torch.zeros(0, dtype=torch.long, device=run.device)
        self._gather_rows(run.param, [torch.cat(o) if o else empty for o in owned])

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


# -- local process groups (CPU tests, machines without torchrun) ------------------------------
def _spawn_main(rank, world_size, init, backend, threads, fn, args):
    torch.set_num_threads(threads)
    os.environ.setdefault("UNLEARNABLE_QUIET", "1")
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world_size)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def spawn_local(world_size: int, fn, *args, backend: str = "gloo", threads: int | None = None) -> None:
    """Run ``fn(*args)`` in ``world_size`` new local processes that form a process group
    (gloo on the CPU by default). ``fn`` must be importable (module level).

    Each process uses ``threads`` intra-op threads (default: ``OMP_NUM_THREADS``, else 1).
    CPU kernels split their reductions by thread count, so a one-process twin is only
    bit-identical when it runs with the same number of threads."""
    if threads is None:
        threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    import tempfile

    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_spawn_main, args=(world_size, f"file://{d}/rendezvous", backend, threads, fn, args),
                 nprocs=world_size, join=True)


def run_all(calls) -> None:
    """Run ``fn(*args)`` for each ``(fn, args)`` in order (several jobs in one process group)."""
    for fn, args in calls:
        fn(*args)


def generate_to_file(method: str, preset: str, overrides: dict, train, seed: int, path: str) -> None:
    """Run an attack's generation in the current process group; rank 0 saves the float
    perturbation (``torch.save``) to ``path``. ``shards`` is set to the world size."""
    from .attacks import get_attack
    attack = get_attack(method).from_preset(preset, **{**overrides, "shards": world()[1]})
    res = attack.generate(train, seed=seed)
    if world()[0] == 0:
        torch.save(res.delta.cpu(), path)


def train_to_file(train, test, cfg, seed: int, path: str) -> None:
    """:func:`unlearnable.train.ddp.train_victim_ddp` in the current process group; rank 0 saves the
    weights and history."""
    from .train.ddp import train_victim_ddp
    res = train_victim_ddp(train, test, cfg, seed=seed)
    if world()[0] == 0:
        torch.save({"state": {k: v.cpu() for k, v in res.model.state_dict().items()}, "history": res.history,
                    "train_acc": res.train_acc}, path)


# -- torchrun entry points ------------------------------------------------------------------
def _init_from_env() -> torch.device:
    use_cuda = torch.cuda.is_available() and os.environ.get("UNLEARNABLE_DDP_DEVICE", "auto") != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _cmd_poison(args, device) -> None:
    from .attacks import get_attack
    from .cli import _attack_overrides
    from .data import load_dataset, spec_path
    from .fsutil import prepare_output_dir
    from .poison import partial_dir, poison_dataset
    if args.method not in ("mi-ue",):
        raise UnlearnableError(f"DDP generation supports mi-ue, got {args.method!r}")
    rank, size = world()
    overrides = {**_attack_overrides(args), "device": str(device), "shards": size}
    ok = torch.ones(1, device=device)
    if rank == 0:
        try:  # fail on every rank, not only on rank 0, when the output cannot be written
            prepare_output_dir(args.out, args.overwrite, inputs=[spec_path(args.data)])
            get_attack(args.method).from_preset(args.preset, **overrides)
        except UnlearnableError:
            ok.zero_()
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            raise
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if not ok.item():
        raise UnlearnableError("rank 0 refused the output or the config (see its message)")
    if rank == 0:
        m = poison_dataset(args.method, args.data, args.out, subset=args.subset, seed=args.seed, preset=args.preset,
                           overrides=overrides, resume=args.resume, overwrite=args.overwrite)
        print(f"{args.out}: {m['counts']['train']} images, L-inf {m['linf_255']}/255, "
              f"{m['timings']['generate_s']} s on {size} ranks")
    else:
        splits = load_dataset(args.data)
        train = splits.train.stratified_subset(args.subset, args.seed) if args.subset else splits.train
        attack = get_attack(args.method).from_preset(args.preset, **overrides)
        attack.generate(train, seed=args.seed, workdir=partial_dir(Path(args.out)), resume=args.resume)
    dist.barrier()


def _cmd_train(args, device) -> None:
    from .data import load_dataset, spec_path
    from .fsutil import prepare_output_dir, write_json
    from .models.checkpoint import save_model
    from .train import victim_preset
    rank, size = world()
    cfg = victim_preset(args.preset, model=args.model, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                        augment=args.augment, device=str(device))
    if rank == 0:
        prepare_output_dir(args.out, args.overwrite, inputs=[spec_path(args.data)])
    splits = load_dataset(args.data)
    from .train.ddp import train_victim_ddp
    res = train_victim_ddp(splits.train, splits.test, cfg, seed=args.seed)
    if rank == 0:
        out = Path(args.out)
        save_model(res.model, out, name=cfg.model, in_channels=splits.train.channels,
                   num_classes=splits.train.num_classes, image_size=splits.train.image_size[0])
        write_json(out / "metrics.json", {"data": splits.name, "model": cfg.model, "seed": args.seed,
                                          "ranks": size, **res.metrics()})
        print(f"{out}: test acc {res.test_acc:.4f} on {size} ranks ({res.seconds:.0f} s)")
    dist.barrier()


def main(argv=None) -> int:
    from .cli import _add_attack_flags, _Parser, _positive_int, _positive_number, _seed, guarded
    p = _Parser(prog="python -m unlearnable.distributed", description="DDP generation and victim training "
                "(run under torchrun --nproc_per_node=N)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    q = sub.add_parser("poison", help="MI-UE generation with every batch split over the ranks")
    q.add_argument("--method", default="mi-ue")
    q.add_argument("--data", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--subset", type=_positive_int)
    q.add_argument("--seed", type=_seed, default=0)
    q.add_argument("--resume", action="store_true")
    q.add_argument("--overwrite", action="store_true")
    _add_attack_flags(q)
    t = sub.add_parser("train", help="standard victim training with every batch split over the ranks")
    t.add_argument("--data", required=True)
    t.add_argument("--model", default="cnn")
    t.add_argument("--preset", default="cpu")
    t.add_argument("--epochs", type=_positive_int)
    t.add_argument("--lr", type=_positive_number)
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument("--augment")
    t.add_argument("--seed", type=_seed, default=0)
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    device = _init_from_env()
    try:
        return guarded(lambda: (_cmd_poison if args.command == "poison" else _cmd_train)(args, device),
                       where=f"rank {world()[0]}: ")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

"""Data-parallel (DDP) poison generation and victim training, and their one-process twin.

The arithmetic (how a batch is split, the one-process twin and when the two are
bit-identical) is :mod:`unlearnable.sharding`'s; this module holds the local process groups
(:func:`spawn_local`, for tests and machines without torchrun), jobs that write their
result to a file, and the torchrun entry points.

Entry points (``torchrun --nproc_per_node=N -m unlearnable.distributed ...``)::

    poison --method mi-ue --data SPEC --out DIR [--subset N] [--seed S] [--preset P] [--resume] [...]
    train  --data DIR --model cnn --out OUT [--preset cpu] [--epochs N] [--seed S] [...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import UnlearnableError
from .sharding import world


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

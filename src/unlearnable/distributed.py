"""Data-parallel (DDP) poison generation and victim training, and their one-process twin.

The arithmetic (how a batch is split, the one-process twin and when the two are
bit-identical) is :mod:`unlearnable.sharding`'s; this module holds the local process groups
(:func:`spawn_local`, for tests and machines without torchrun), jobs that write their
result to a file, and the torchrun entry points (their command line is
:mod:`unlearnable.cli.distributed`'s).

Entry points (``torchrun --nproc_per_node=N -m unlearnable.distributed ...``)::

    poison --method mi-ue --data SPEC --out DIR [--subset N] [--seed S] [--preset P] [--resume] [...]
    train  --data DIR --model cnn --out OUT [--preset cpu] [--epochs N] [--seed S] [...]
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

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


# -- the torchrun entry point -----------------------------------------------------------------
def main(argv=None) -> int:
    """``torchrun ... -m unlearnable.distributed poison|train ...``; the command line and the
    two commands are :mod:`unlearnable.cli.distributed`'s (imported here, when run, so the
    library never imports the CLI)."""
    from .cli.distributed import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())

"""The command line of the torchrun entry points (``unlearnable.distributed``'s ``main``)::

    torchrun --nproc_per_node=N -m unlearnable.distributed poison --method mi-ue --data SPEC --out DIR [...]
    torchrun --nproc_per_node=N -m unlearnable.distributed train --data DIR --model cnn --out OUT [...]

Every rank parses the same command line, joins the process group and runs the command;
an error is one line naming the rank (the CLI's error boundary).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import UnlearnableError
from ..sharding import world
from .boundary import guarded
from .common import Parser, add_attack_flags, attack_overrides, positive_int, positive_number, seed


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
    from ..attacks import get_attack
    from ..data import load_dataset, spec_path
    from ..fsutil import prepare_output_dir
    from ..poison import partial_dir, poison_dataset
    if args.method not in ("mi-ue",):
        raise UnlearnableError(f"DDP generation supports mi-ue, got {args.method!r}")
    rank, size = world()
    overrides = {**attack_overrides(args), "device": str(device), "shards": size}
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
    from ..data import load_dataset, spec_path
    from ..fsutil import prepare_output_dir, write_json
    from ..models.checkpoint import save_model
    from ..train import victim_preset
    rank, size = world()
    cfg = victim_preset(args.preset, model=args.model, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                        augment=args.augment, device=str(device))
    if rank == 0:
        prepare_output_dir(args.out, args.overwrite, inputs=[spec_path(args.data)])
    splits = load_dataset(args.data)
    from ..train.ddp import train_victim_ddp
    res = train_victim_ddp(splits.train, splits.test, cfg, seed=args.seed)
    if rank == 0:
        out = Path(args.out)
        save_model(res.model, out, name=cfg.model, in_channels=splits.train.channels,
                   num_classes=splits.train.num_classes, image_size=splits.train.image_size[0])
        write_json(out / "metrics.json", {"data": splits.name, "model": cfg.model, "seed": args.seed,
                                          "ranks": size, **res.metrics()})
        print(f"{out}: test acc {res.test_acc:.4f} on {size} ranks ({res.seconds:.0f} s)")
    dist.barrier()


def register(sub) -> None:
    q = sub.add_parser("poison", help="MI-UE generation with every batch split over the ranks")
    q.add_argument("--method", default="mi-ue")
    q.add_argument("--data", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--subset", type=positive_int)
    q.add_argument("--seed", type=seed, default=0)
    q.add_argument("--resume", action="store_true")
    q.add_argument("--overwrite", action="store_true")
    add_attack_flags(q)
    q.set_defaults(func=_cmd_poison)
    t = sub.add_parser("train", help="standard victim training with every batch split over the ranks")
    t.add_argument("--data", required=True)
    t.add_argument("--model", default="cnn")
    t.add_argument("--preset", default="cpu")
    t.add_argument("--epochs", type=positive_int)
    t.add_argument("--lr", type=positive_number)
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--augment")
    t.add_argument("--seed", type=seed, default=0)
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=_cmd_train)


def build_parser() -> Parser:
    p = Parser(prog="python -m unlearnable.distributed", description="DDP generation and victim training "
               "(run under torchrun --nproc_per_node=N)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    register(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = _init_from_env()
    try:
        return guarded(lambda: args.func(args, device), where=f"rank {world()[0]}: ", flags=args.option_flags)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

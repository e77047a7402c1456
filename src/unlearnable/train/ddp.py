"""Standard victim training with every batch split over DDP ranks (or shards in one process).

``torchrun --nproc_per_node=N -m unlearnable.distributed train ...`` calls
:func:`train_victim_ddp`. The loop is :func:`unlearnable.train.train_victim`'s (same
batches, augmentation, schedule and per-epoch clean test accuracy), with each step done by
:class:`unlearnable.sharding.Sharding`: every rank draws the same batch, keeps its
shard, gradients are averaged by ``DistributedDataParallel`` and the BatchNorm running
statistics are averaged after each step. In one process with ``shards=W`` the same
arithmetic runs sequentially; with W = 2 the two give identical weights (see the module
docstring of :mod:`unlearnable.sharding`). Data and batch defenses and the other
protocols are not supported on this path; ``unlearnable run`` covers them.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from ..data.augment import build_augment
from ..models import build_model
from ..progress import bar
from ..runtime import make_generator, prepare_model, resolve_device, seed_everything
from ..sharding import Sharding, world
from . import standard
from .loops import TensorData, evaluate, num_batches, train_epoch


def train_victim_ddp(train, test, cfg, *, seed: int = 0, shards: int | None = None,
                     desc: str = "victim (ddp)") -> standard.TrainResult:
    """Train ``cfg.model`` from scratch on ``train`` with each batch split over ``shards``
    (default: the world size of the process group, 1 without one)."""
    cfg.validate()
    sh = Sharding(shards or world()[1])
    device = resolve_device(cfg.device)
    seed_everything(seed)
    gen = make_generator(seed)
    model = prepare_model(build_model(cfg.model, train.channels, train.num_classes, train.image_size[0]), device,
                          cfg.channels_last)
    opt, sched = standard.make_optimizer(model, cfg)  # cosine or step schedule, as train_victim
    augment = build_augment(cfg.augment, cfg.crop_padding)
    tr, te = TensorData.from_dataset(train, device), TensorData.from_dataset(test, device)
    history, t0 = [], time.time()
    with bar(total=cfg.epochs * num_batches(len(tr), cfg.batch_size), desc=desc, unit="batch") as pb:
        for epoch in range(cfg.epochs):
            loss, acc = train_epoch(model, opt, tr, batch_size=cfg.batch_size, generator=gen, augment=augment,
                                    on_batch=pb.update,
                                    step=sh.step_fn(bf16=cfg.bf16, channels_last=cfg.channels_last))
            sched.step()
            test_acc = evaluate_sharded(sh, model, te, bf16=cfg.bf16, channels_last=cfg.channels_last)
            history.append({"epoch": epoch + 1, "loss": round(loss, 5), "train_acc": round(acc, 5),
                            "test_acc": round(test_acc, 5), "seconds": round(time.time() - t0, 2)})
    train_acc = evaluate_sharded(sh, model, tr, bf16=cfg.bf16, channels_last=cfg.channels_last)
    extra = {}
    standard.flag_did_not_learn(extra, desc, cfg, train.labels, train_acc, history[-1]["loss"], warn=sh.writer)
    return standard.TrainResult(test_acc=history[-1]["test_acc"], train_acc=train_acc, history=history,
                                seconds=time.time() - t0, config={**asdict(cfg), "shards": sh.w}, model=model,
                                extra=extra)


@torch.no_grad()
def evaluate_sharded(sh: Sharding, model, data: TensorData, *, batch_size: int = 256, bf16=False,
                     channels_last=False) -> float:
    """Accuracy on ``data``: each shard of the rows scored separately, counts summed."""
    model.eval()
    correct = torch.zeros((), dtype=torch.float64)
    for s, e in sh.eval_bounds(len(data)):
        if e > s:
            part = TensorData(data.x[s:e], data.y[s:e])
            correct += evaluate(model, part, batch_size=batch_size, bf16=bf16, channels_last=channels_last) * (e - s)
    return float(sh.all_sum(correct, data.x.device).round()) / max(1, len(data))

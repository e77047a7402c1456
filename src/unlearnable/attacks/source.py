"""Shared machinery for attacks that train a source model: state, checkpoint, poison passes.

:class:`SourceRun` holds what every such attack needs (device, seeded generator, source
model and optimiser, the training data on the device, the perturbation (:attr:`SourceRun.perturbation`), a
history) and saves all of it to one atomically replaced checkpoint after each unit of
work, so that ``resume=True`` continues a killed run bit-identically on the same device.

The perturbation is either sample-wise, shape (N, C, H, W), or class-wise,
shape (K, C, H, W); :meth:`SourceRun.expand` turns it into per-sample perturbations and
:meth:`SourceRun.update_poisons` runs one pass of an update rule over every batch,
averaging the per-sample results per class in the class-wise case.

:class:`RunRecord` is the part every resumable generator shares, whatever it trains (TUE's
contrastive network and GUE's generator use it directly): the determining settings, the
data fingerprint, the checkpoint and the clock.

Config classes that use it provide ``model``, ``batch_size``, ``lr``, ``momentum``,
``weight_decay``, ``eps``, ``device``, ``bf16`` and ``channels_last``; ``lr_min`` is
needed for the cosine schedule.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.dataset import fingerprint
from ..errors import UnlearnableError
from ..models import build_model
from ..progress import bar
from ..runtime import autocast, make_generator, prepare_model, resolve_device, seed_everything, to_model_input
from ..sharding import sharding_for
from ..train.loops import TensorData, batches, evaluate, num_batches, sgd_cosine, train_epoch
from ..data.augment import build_augment
from .base import AttackResult, Checkpoint, rng_state, set_rng_state
from .pgd import pgd, project

# Config fields that do not change the poisons (a run may resume on another device).
RUNTIME_KEYS = frozenset({"device", "bf16", "channels_last", "forward_chunk"})


class RunRecord:
    """What makes a generation run resumable, whatever it trains: the settings that decide
    its output (``cfg`` without ``runtime_keys``), the data's fingerprint, the checkpoint in
    ``workdir`` and the clock.

    With ``resume`` and a checkpoint in ``workdir``, :attr:`state` is that checkpoint (refused
    when it was made with another method, config, seed or data) and the clock continues
    from its elapsed time; otherwise :attr:`state` is None.
    """

    def __init__(self, name: str, cfg, train, *, seed: int, workdir=None, resume: bool = False,
                 runtime_keys=RUNTIME_KEYS, match: dict | None = None):
        self.name, self.seed, self.match = name, seed, dict(match or {})
        self.determining = {k: v for k, v in asdict(cfg).items() if k not in runtime_keys}
        self.ckpt = Checkpoint(workdir) if workdir is not None else None
        # Only a checkpoint needs the data's name: a run without one (protect's units) skips the hash.
        self.fp = fingerprint(train.images, train.labels) if self.ckpt is not None else None
        self.state = None
        if resume and self.ckpt is not None and self.ckpt.exists():
            self.state = self.ckpt.load_matching(name, self.determining, seed, self.fp, **self.match)
        self.t0 = time.time() - (self.state["elapsed"] if self.state is not None else 0.0)

    def seconds(self) -> float:
        return round(time.time() - self.t0, 2)

    def save(self, state: dict) -> None:
        """Checkpoint ``state`` with what :meth:`Checkpoint.load_matching` checks (a no-op
        without a workdir)."""
        if self.ckpt is not None:
            self.ckpt.save({"method": self.name, **state, "config": self.determining, "seed": self.seed,
                            "fingerprint": self.fp, **self.match, "elapsed": time.time() - self.t0})


class SourceRun:
    """The state of one source-model attack run, restored from ``workdir`` on resume.

    ``schedule`` is ``"cosine"`` (SGD annealed over ``schedule_epochs`` scheduler steps,
    the caller steps it) or ``"constant"``. :attr:`perturbation` is (N, C, H, W), or (K, C, H, W)
    when ``classwise``; it starts at zero (the caller initialises it when :attr:`start`
    is 0). Setup order (seed, generator, model, optimiser) is fixed:
    it decides the random streams, so changing it changes every attack's output.
    """

    def __init__(self, name: str, cfg, train, *, seed: int, workdir=None, resume: bool = False,
                 schedule: str = "cosine", schedule_epochs: int = 1, classwise: bool = False):
        self.name, self.cfg, self.seed = name, cfg, seed
        self.device = device = resolve_device(cfg.device)
        seed_everything(seed)
        self.gen = make_generator(seed)
        self.model = prepare_model(build_model(cfg.model, train.channels, train.num_classes, train.image_size[0]),
                                   device, cfg.channels_last)
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {schedule!r}")
        self.schedule = schedule
        self.new_optimizer(schedule_epochs)
        self.data = TensorData.from_dataset(train, device)
        self.num_classes = train.num_classes
        self.classwise = classwise
        shape = (train.num_classes, *self.data.x.shape[1:]) if classwise else tuple(self.data.x.shape)
        self.perturbation = torch.zeros(shape, dtype=torch.float32, device=device)
        self.record = RunRecord(name, cfg, train, seed=seed, workdir=workdir, resume=resume)
        self.history: list[dict] = []
        self.extra: dict = {}
        self.start = 0
        state = self.record.state
        if state is not None:
            self.perturbation.copy_(state["delta"].to(device))
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            if self.sched is not None:
                self.sched.load_state_dict(state["scheduler"])
            set_rng_state(self.gen, state["rng"])
            self.start, self.history = state["epoch"], list(state["history"])
            self.extra = dict(state.get("extra", {}))
        # DDP hook (unlearnable.sharding): batches split over ranks, or the same arithmetic in
        # one process, when the config asks for shards; None for the plain run.
        self.sharding = sharding_for(cfg)
        if self.sharding is not None and not self.sharding.writer:
            self.record.ckpt = None  # rank 0 writes the checkpoint; the others only read it on resume

    def new_optimizer(self, schedule_epochs: int) -> None:
        """A fresh SGD (momentum, weight decay) for the model: cosine-annealed over
        ``schedule_epochs`` scheduler steps, or at a constant rate."""
        cfg = self.cfg
        if self.schedule == "cosine":
            self.opt, self.sched = sgd_cosine(self.model, lr=cfg.lr, momentum=cfg.momentum,
                                              weight_decay=cfg.weight_decay, epochs=schedule_epochs,
                                              lr_min=cfg.lr_min)
        else:
            self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay)
            self.sched = None

    def restart_model(self, seed: int, schedule_epochs: int) -> None:
        """Re-initialise the model (a fresh draw seeded by ``seed``, so a resumed run draws
        the same) and give it a fresh optimiser and schedule."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for m in self.model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        self.new_optimizer(schedule_epochs)

    # -- bookkeeping ---------------------------------------------------------------
    def seconds(self) -> float:
        return self.record.seconds()

    def save(self, epoch: int, **extra) -> None:
        """Checkpoint after ``epoch`` units of work (a no-op without a workdir)."""
        self.extra.update(extra)
        if self.record.ckpt is None:
            return
        self.record.save({"epoch": epoch, "delta": self.perturbation.cpu(), "model": self.model.state_dict(),
                          "optimizer": self.opt.state_dict(),
                          "scheduler": self.sched.state_dict() if self.sched is not None else None,
                          "rng": rng_state(self.gen), "history": self.history, "extra": self.extra})

    def info(self, **more) -> dict:
        return {"history": self.history, "seconds": self.seconds(), "config": asdict(self.cfg),
                "resumed_from_epoch": self.start, **more}

    # -- perturbations -------------------------------------------------------------
    def expand(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample perturbations (rows ``idx``, or all) from :attr:`perturbation` (a class-wise one is indexed by label)."""
        if idx is None:
            return self.perturbation[self.data.y] if self.classwise else self.perturbation
        return self.perturbation[self.data.y[idx]] if self.classwise else self.perturbation[idx]

    def final_delta(self) -> torch.Tensor:
        """The per-sample perturbation on the CPU, projected to the budget and pixel range."""
        out = torch.empty(self.data.x.shape, dtype=torch.float32)
        for idx in batches(len(self.data), 1024, None, self.device):
            x, _ = self.data.batch(idx)
            out[idx.cpu()] = project(x, self.expand(idx), self.cfg.eps).cpu()
        return out

    def init_uniform(self) -> None:
        """Uniform noise in [-eps, eps] from the run's generator (EM's initialisation)."""
        noise = torch.rand(self.perturbation.shape, generator=self.gen).to(self.device)
        self.perturbation.copy_((noise * 2 - 1) * self.cfg.eps)

    def update_poisons(self, update: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], *,
                       shuffle: bool = True, on_batch=None, start_batch: int = 0, stop_batch: int | None = None,
                       balanced: bool = False):
        """Run ``update(x, y, delta) -> new delta`` over the batches of the training set
        (shuffled batches hold every class in proportion when ``balanced``).

        Sample-wise: the result replaces the batch's rows. Class-wise: every class seen in
        the batch takes the mean of its samples' new perturbations, clipped to eps (the
        per-class averaging of Huang et al. 2021), so later batches start from it.
        ``start_batch``/``stop_batch`` select a slice of an unshuffled pass (for attacks
        that checkpoint inside one pass).
        """
        gen = self.gen if shuffle else None
        order = batches(len(self.data), self.cfg.batch_size, gen, self.device,
                        stratify=self.data.y if balanced else None)
        if self.sharding is not None and self.sharding.distributed:  # DDP hook
            return self.sharding.update_poisons(self, update, order, on_batch=on_batch, start_batch=start_batch,
                                                stop_batch=stop_batch)
        for b, idx in enumerate(order):
            if b < start_batch:
                continue
            if stop_batch is not None and b >= stop_batch:
                break
            x, y = self.data.batch(idx)
            new = update(x, y, self.expand(idx))
            if self.classwise:
                sums = torch.zeros_like(self.perturbation).index_add_(0, y, new)
                counts = torch.bincount(y, minlength=self.perturbation.shape[0])
                seen = counts > 0
                self.perturbation[seen] = (sums[seen] / counts[seen].view(-1, 1, 1, 1)).clamp_(-self.cfg.eps, self.cfg.eps)
            else:
                self.perturbation[idx] = new
            if on_batch is not None:
                on_batch()

    # -- training ------------------------------------------------------------------
    def train_pass(self, augment=None, *, delta: torch.Tensor | None = None, max_batches: int | None = None,
                   perturb=None, on_batch=None) -> tuple[float, float]:
        step = None  # the plain SGD step of train_epoch
        if self.sharding is not None:  # DDP hook: every batch split over the shards
            if perturb is not None:
                raise UnlearnableError(f"{self.name}: sharded (DDP) source training does not support adversarial "
                                       f"training")
            step = self.sharding.step_fn(bf16=self.cfg.bf16, channels_last=self.cfg.channels_last)
        return train_epoch(self.model, self.opt, self.data, batch_size=self.cfg.batch_size, generator=self.gen,
                           augment=augment, delta=delta, bf16=self.cfg.bf16, channels_last=self.cfg.channels_last,
                           on_batch=on_batch, max_batches=max_batches, perturb=perturb, step=step)

    def train_steps(self, steps: int, augment=None, *, delta: torch.Tensor | None = None, perturb=None,
                    on_batch=None) -> tuple[float, float]:
        """Exactly ``steps`` SGD batches: fresh shuffles, as many passes as it takes (a
        small dataset has fewer batches than a round asks for). Returns mean loss, accuracy."""
        n_b = num_batches(len(self.data), self.cfg.batch_size)
        done, loss_sum, acc_sum, seen = 0, 0.0, 0.0, 0
        while done < steps:
            take = min(steps - done, n_b)
            n = min(len(self.data), take * self.cfg.batch_size)
            loss, acc = self.train_pass(augment, delta=delta, max_batches=take, perturb=perturb, on_batch=on_batch)
            loss_sum, acc_sum, seen, done = loss_sum + loss * n, acc_sum + acc * n, seen + n, done + take
        return loss_sum / max(1, seen), acc_sum / max(1, seen)

    def gather_batch(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DDP hook: the whole poison batch's features and labels when each rank holds a shard
        (its own rows keep their graph); ``(z, y)`` unchanged otherwise."""
        return (z, y) if self.sharding is None else self.sharding.gather(z, y)

    def accuracy(self, delta: torch.Tensor | None = None) -> float:
        """Source-model accuracy on the (poisoned, when ``delta`` is given) training set."""
        return evaluate(self.model, self.data, batch_size=max(256, self.cfg.batch_size), bf16=self.cfg.bf16,
                        channels_last=self.cfg.channels_last, delta=delta)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.cfg.bf16):
            out = self.model(to_model_input(x, self.cfg.channels_last))
        return out.float()

    def ce(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(x), y)

    def adversary(self, radius: float, steps: int, step_size: float) -> Callable:
        """A ``perturb`` hook for :meth:`train_pass`: PGD that maximises CE within ``radius``
        (random start, eval-mode model so BN statistics are not updated by the attack)."""
        def perturb(model, x, y):
            if radius <= 0 or steps <= 0:
                return x
            model.eval()
            rho = pgd(lambda inp: self.ce(inp, y), x, torch.zeros_like(x), steps=steps, step_size=step_size,
                      eps=radius, minimize=False, random_start=True, generator=self.gen)
            model.train()
            return x + rho
        return perturb


CRAFT_CHUNK = 16  # poison batches between checkpoints while crafting (does not change the result)


def train_then_craft(run: SourceRun, *, epochs: int, augment, update_factory, perturb=None,
                     desc: str = "") -> None:
    """Train the source model on clean data, then craft every poison once against it.

    ``epochs`` passes of SGD (the cosine schedule, stepped per epoch; ``perturb`` is an
    optional :func:`train_epoch` hook, e.g. :meth:`SourceRun.adversary` for a robust
    source model), then one unshuffled pass of ``update_factory(run)`` (called once, with
    the trained model in eval mode) over the poisons. A checkpoint follows each epoch and
    each :data:`CRAFT_CHUNK` poison batches, so a killed run resumes where it stopped.
    """
    cfg = run.cfg
    n_b = num_batches(len(run.data), cfg.batch_size)
    chunks = -(-n_b // CRAFT_CHUNK)
    total = epochs + chunks
    update = None
    initial = min(run.start, epochs) * n_b + max(0, run.start - epochs) * CRAFT_CHUNK
    with bar(total=epochs * n_b + n_b, initial=initial, desc=desc or run.name, unit="batch") as pb:
        for unit in range(run.start, total):
            if unit < epochs:
                ce, acc = run.train_pass(augment, perturb=perturb, on_batch=pb.update)
                run.sched.step()
                run.history.append({"epoch": unit + 1, "source_ce": round(ce, 5), "source_train_acc": round(acc, 5),
                                    "seconds": run.seconds()})
                pb.set_postfix(acc=f"{acc:.3f}")
            else:
                if update is None:
                    run.model.eval()
                    update = update_factory(run)
                c = unit - epochs
                run.update_poisons(update, shuffle=False, start_batch=c * CRAFT_CHUNK,
                                   stop_batch=(c + 1) * CRAFT_CHUNK, on_batch=pb.update)
            run.save(unit + 1)


def run_min_min(attack, train, *, seed: int, workdir, resume: bool, update_factory, model_perturb=None):
    """The error-minimising rounds shared by EM, REM and SEM; returns an AttackResult.

    Each round: ``cfg.train_steps`` source-model batches on the poisoned data (fresh
    shuffles, ``cfg.train_augment``; ``model_perturb(run)``, when given, returns a
    :func:`train_epoch` ``perturb`` hook, e.g. REM's adversarial training), then one
    shuffled pass of ``update_factory(run)`` over all poisons with the model in eval
    mode, then the source model's accuracy on the poisoned training set (no
    augmentation); stop once it reaches ``cfg.stop_at`` (None: never) or after
    ``cfg.epochs`` rounds. The perturbation is class-wise when ``cfg.mode == "class"``; it
    starts uniform in [-eps, eps] when ``cfg.init == "uniform"``. Checkpointed per round.
    """
    cfg = attack.config
    run = SourceRun(attack.name, cfg, train, seed=seed, workdir=workdir, resume=resume, schedule="constant",
                    classwise=getattr(cfg, "mode", "sample") == "class")
    if run.start == 0 and cfg.init == "uniform":
        run.init_uniform()
    augment = build_augment(cfg.train_augment, cfg.crop_padding)
    stop_at = cfg.stop_at
    per_round = cfg.train_steps + num_batches(len(run.data), cfg.batch_size)
    perturb = model_perturb(run) if model_perturb is not None else None
    update = update_factory(run)
    done = bool(run.extra.get("done", False))
    with bar(total=cfg.epochs * per_round, initial=run.start * per_round, desc=attack.name, unit="batch") as pb:
        for rnd in range(run.start, cfg.epochs):
            if done:
                break
            ce, acc = run.train_steps(cfg.train_steps, augment, delta=run.expand(), perturb=perturb,
                                      on_batch=pb.update)
            run.model.eval()
            run.update_poisons(update, on_batch=pb.update)
            poisoned_acc = run.accuracy(run.expand())
            done = stop_at is not None and poisoned_acc >= stop_at
            run.history.append({"epoch": rnd + 1, "source_ce": round(ce, 5), "source_train_acc": round(acc, 5),
                                "poisoned_train_acc": round(poisoned_acc, 5), "seconds": run.seconds()})
            pb.set_postfix(acc=f"{poisoned_acc:.3f}")
            run.save(rnd + 1, done=done)
    return AttackResult(delta=run.final_delta(), info=run.info(stopped=done, rounds=len(run.history)))

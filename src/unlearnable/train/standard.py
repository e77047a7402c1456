"""Victim training: the shared engine, standard training (ST) and its presets.

:func:`train_victim` trains ``cfg.model`` from scratch and scores it on the clean test set
after every epoch. Defenses compose with it: data defenses (JPEG, grayscale, OP, ...)
transform the training set once, in the order given, before training; batch defenses
(Cutout, CutMix, Mixup, UEraser) run inside the loop on every batch, in the order given.
The test set is never transformed. Protocols (``st`` here, ``at`` in
:mod:`unlearnable.train.adversarial`) are thin wrappers registered in
:mod:`unlearnable.train.protocols`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..data.augment import build_augment
from ..data.dataset import ImageDataset
from ..errors import UnlearnableError, check_finite_fields
from ..models import build_model
from ..progress import bar, log
from ..runtime import make_generator, prepare_model, resolve_device, seed_everything
from .loops import TensorData, evaluate, num_batches, sgd_cosine, sgd_multistep, train_epoch
from .prior import check_finetune, start_from_prior
from .protocols import register_protocol


@dataclass
class VictimConfig:
    model: str = "cnn"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" (to lr_min) or "step" (x gamma at each milestone epoch)
    lr_min: float = 1e-6
    milestones: tuple = ()
    gamma: float = 0.1
    augment: str = "none"  # CPU default; see docs/mi-ue.md (crop costs accuracy on 28 px grey data)
    crop_padding: int = 4
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = True
    # Settings of the protocol this preset is meant for (e.g. {"at_steps": 10}); the
    # protocol reads them, explicit options override them, other protocols ignore them.
    protocol_options: dict = field(default_factory=dict)
    # Start from a pretrained prior (train/prior.py): a checkpoint folder or its
    # model.safetensors; the backbone is loaded, the head is new. None: from scratch.
    init: str | None = None
    finetune: str = "full"  # with init: full | low-lr | linear-probe
    backbone_lr_scale: float = 0.1  # low-lr: the backbone's rate as a fraction of lr

    def validate(self):
        for k in ("epochs", "batch_size"):
            if getattr(self, k) <= 0:
                raise UnlearnableError(f"victim {k} must be positive, got {getattr(self, k)}")
        if self.lr <= 0:
            raise UnlearnableError(f"victim lr must be positive, got {self.lr}")
        if self.schedule not in ("cosine", "step"):
            raise UnlearnableError(f"unknown lr schedule {self.schedule!r}; choose cosine or step")
        build_augment(self.augment, self.crop_padding)
        check_finetune(self.finetune)
        if self.init is None and self.finetune != "full":
            raise UnlearnableError(f"victim finetune {self.finetune!r} needs an initial checkpoint (init)")
        if not 0 < self.backbone_lr_scale <= 1:
            raise UnlearnableError(f"victim backbone_lr_scale must be in (0, 1], got {self.backbone_lr_scale}")
        return self


# The paper's protocols (Sec. 6 and Appendix E.4) and their CPU counterparts. AT: lr 0.1,
# x0.1 at epochs 40 and 80 of 100, PGD-10 (Fu et al. 2022; Liu et al. 2024); the CPU AT
# preset keeps that shape (decay at 40% and 80% of 10 epochs) with PGD-3.
VICTIM_PRESETS = {
    "paper-st": VictimConfig(model="resnet-18", epochs=200, batch_size=128, lr=0.5, weight_decay=1e-4,
                             augment="crop-flip", crop_padding=4),
    "paper-at": VictimConfig(model="resnet-18", epochs=100, batch_size=128, lr=0.1, weight_decay=5e-4,
                             schedule="step", milestones=(40, 80), gamma=0.1, augment="crop-flip", crop_padding=4,
                             protocol_options={"at_steps": 10}),
    "cpu": VictimConfig(),
    "cpu-at": VictimConfig(epochs=10, schedule="step", milestones=(4, 8), gamma=0.1,
                           protocol_options={"at_steps": 3}),
}


# Preset families: ``cpu`` and ``paper`` name the ST and AT recipes of one setting.
PRESET_FAMILIES = {"cpu": {"st": "cpu", "at": "cpu-at"}, "paper": {"st": "paper-st", "at": "paper-at"}}


def preset_name(protocol: str, name: str | None = None) -> str:
    """The preset a protocol runs with: ``name`` itself, or its family's member for the
    protocol (``cpu`` -> ``cpu-at`` under AT); no name means the ``cpu`` family."""
    family = PRESET_FAMILIES.get(name or "cpu")
    if family is None:
        return name
    return family.get(protocol, family["st"])


def victim_preset(name: str, **overrides) -> VictimConfig:
    if name not in VICTIM_PRESETS:
        raise UnlearnableError(f"unknown victim preset {name!r}; choose from {sorted(VICTIM_PRESETS)}")
    cfg = replace(VICTIM_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    check_finite_fields(f"victim {name}", cfg)
    return cfg.validate()


@dataclass
class TrainResult:
    test_acc: float
    train_acc: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None
    protocol: str = "st"
    defenses: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # protocol results, e.g. robust accuracy, defense timings

    def best(self) -> dict:
        """``{"best_test_acc", "best_epoch"}`` over the epochs' clean test accuracy (empty for a
        protocol without per-epoch scores, e.g. simclr's single linear probe)."""
        epochs = [h for h in self.history if "epoch" in h and "test_acc" in h]
        if not epochs:
            return {}
        acc, epoch = best_epoch(epochs)
        return {"best_test_acc": acc, "best_epoch": epoch}

    def metrics(self) -> dict:
        return {"test_acc": self.test_acc, "train_acc": self.train_acc, **self.best(), "protocol": self.protocol,
                "defenses": self.defenses, "seconds": round(self.seconds, 2), **self.extra,
                "history": self.history, "config": self.config}


def best_epoch(history: list[dict]) -> tuple[float, int]:
    """The highest per-epoch clean test accuracy in ``history`` and its epoch (the first
    on ties): what an attacker who early-stops on clean validation data would get. The
    final epoch is what the tables count; this is reported beside it."""
    if not history:
        raise UnlearnableError("no training history to find the best epoch in")
    best = max(history, key=lambda h: (h["test_acc"], -h["epoch"]))
    return float(best["test_acc"]), int(best["epoch"])


def make_optimizer(model, cfg: VictimConfig):
    """``model``: a module, or the parameter groups of a victim started from a prior."""
    if cfg.schedule == "step":
        return sgd_multistep(model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                             milestones=cfg.milestones, gamma=cfg.gamma)
    return sgd_cosine(model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
                      lr_min=cfg.lr_min)


def apply_data_defenses(train: ImageDataset, defenses, *, seed: int, device) -> tuple[ImageDataset, dict]:
    """Run the data defenses in order; returns the new training set and seconds per defense."""
    seconds = {}
    for d in defenses:
        if d.kind != "data":
            continue
        t0 = time.time()
        log(f"defense {d.describe()}: transforming {len(train)} training images")
        out = d.apply(train, seed=seed, device=device)
        if out.images.shape != train.images.shape or not (out.labels == train.labels).all():
            raise UnlearnableError(f"defense {d.describe()} changed the training set's shape or labels")
        train = out
        seconds[d.describe()] = round(time.time() - t0, 2)
    return train, seconds


def train_victim(train: ImageDataset, test: ImageDataset, cfg: VictimConfig, *, seed: int = 0,
                 desc: str = "victim", defenses=(), perturb_factory=None, protocol: str = "st",
                 val: ImageDataset | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``train`` and record per-epoch clean test accuracy.

    The model starts from scratch, or from the prior ``cfg.init`` (its backbone; the head
    is new) trained as ``cfg.finetune`` says. With ``val`` (clean labelled images apart
    from ``test``), the run early-stops: every epoch is scored on ``val`` too, and the
    result is the model of the epoch with the best ``val`` accuracy (the first on ties),
    with that epoch's ``test`` accuracy; ``extra["early_stopping"]`` records the choice.

    ``defenses`` are :class:`~unlearnable.defenses.Defense` objects (data ones run first,
    on the training set; batch ones inside the loop). ``perturb_factory(generator)``, when
    given, returns the loop's ``perturb`` hook (adversarial training). History rows hold
    the epoch's loss and accuracy on the inputs trained on (``train_acc``) and the clean
    test accuracy; the result's ``train_acc`` is the final model's accuracy on the
    training set as trained on (after data defenses, without batch defenses).
    """
    cfg.validate()
    if test is None:
        raise UnlearnableError("victim training needs a test split (the data has none)")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise UnlearnableError(f"train images {train.images.shape[1:]} and test images {test.images.shape[1:]} differ")
    device = resolve_device(cfg.device)
    defenses = list(defenses)
    t0 = time.time()
    train, defense_seconds = apply_data_defenses(train, defenses, seed=seed, device=device)
    batch_defenses = [d for d in defenses if d.kind == "batch"]
    seed_everything(seed)
    gen = make_generator(seed)
    model = build_model(cfg.model, train.channels, train.num_classes, train.image_size[0])
    params, extra = model, {}
    if cfg.init is not None:
        params, extra["prior"] = start_from_prior(
            model, cfg.init, model_name=cfg.model, mode=cfg.finetune, backbone_lr_scale=cfg.backbone_lr_scale,
            lr=cfg.lr, channels=train.channels, size=train.image_size[0])
    model = prepare_model(model, device, cfg.channels_last)
    opt, sched = make_optimizer(params, cfg)
    augment = build_augment(cfg.augment, cfg.crop_padding)
    perturb = perturb_factory(gen) if perturb_factory is not None else None
    tr, te = TensorData.from_dataset(train, device), TensorData.from_dataset(test, device)
    va = TensorData.from_dataset(val, device) if val is not None else None
    chosen, chosen_state = None, None
    history = []
    steps = cfg.epochs * num_batches(len(tr), cfg.batch_size)
    with bar(total=steps, desc=desc, unit="batch") as pb:
        for epoch in range(cfg.epochs):
            loss, train_acc = train_epoch(model, opt, tr, batch_size=cfg.batch_size, generator=gen, augment=augment,
                                          bf16=cfg.bf16, channels_last=cfg.channels_last, on_batch=pb.update,
                                          perturb=perturb, batch_defenses=batch_defenses)
            sched.step()
            test_acc = evaluate(model, te, bf16=cfg.bf16, channels_last=cfg.channels_last)
            row = {"epoch": epoch + 1, "loss": round(loss, 5), "train_acc": round(train_acc, 5),
                   "test_acc": round(test_acc, 5), "seconds": round(time.time() - t0, 2)}
            if va is not None:
                row["val_acc"] = round(evaluate(model, va, bf16=cfg.bf16, channels_last=cfg.channels_last), 5)
                if chosen is None or row["val_acc"] > chosen["val_acc"]:
                    chosen = row
                    chosen_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.append(row)
            pb.set_postfix(train=f"{train_acc:.3f}", test=f"{test_acc:.3f}")
    final = history[-1]
    if chosen is not None:
        model.load_state_dict(chosen_state)
        final = chosen
        extra["early_stopping"] = {"epoch": chosen["epoch"], "val_acc": chosen["val_acc"], "val_images": len(va),
                                   "test_images": len(te), "last_epoch_test_acc": history[-1]["test_acc"]}
    clean_train_acc = evaluate(model, tr, bf16=cfg.bf16, channels_last=cfg.channels_last)
    flag_did_not_learn(extra, desc, cfg, train.labels, clean_train_acc, history[-1]["loss"])
    if defense_seconds:
        extra["defense_seconds"] = defense_seconds
    return TrainResult(test_acc=final["test_acc"], train_acc=clean_train_acc, history=history,
                       seconds=time.time() - t0, config=asdict(cfg), model=model, protocol=protocol,
                       defenses=[d.describe() for d in defenses], extra=extra)


def flag_did_not_learn(extra: dict, desc: str, cfg: VictimConfig, labels: np.ndarray, train_acc: float, loss: float,
                       *, warn: bool = True) -> None:
    """Record under ``extra["did_not_learn"]`` why the victim learned nothing (see
    :func:`did_not_learn`), and warn when ``warn``; nothing when it learned."""
    failed = did_not_learn(desc, cfg, labels, train_acc, loss)
    if failed:
        if warn:
            log(f"warning: {failed}")
        extra["did_not_learn"] = failed


def did_not_learn(desc: str, cfg: VictimConfig, labels: np.ndarray, train_acc: float, loss: float) -> str | None:
    """Why the victim learned nothing, or None: a non-finite loss, or training accuracy no
    better than always answering the most frequent class. Its test accuracy is then chance
    for a reason unrelated to the data, and a table would count it as protection (a LeNet-5
    at the CNN's lr 0.1 collapses to chance on some seeds). Not an error: a one-epoch victim
    on a handful of images can be there legitimately; the caller records it and warns."""
    majority = float(np.bincount(labels).max()) / len(labels)
    if math.isfinite(loss) and train_acc > majority + 0.01:
        return None
    return (f"{desc}: {cfg.model} did not learn (training accuracy {train_acc:.1%}, majority class {majority:.1%}, "
            f"final loss {loss:g}): its test accuracy does not measure the data; lower the lr (now {cfg.lr:g})")


@register_protocol("st")
def standard_training(train: ImageDataset, test: ImageDataset, cfg: VictimConfig, *, seed: int = 0, defenses=(),
                      options: dict | None = None, desc: str = "victim (st)") -> TrainResult:
    """Standard training (ST): cross-entropy SGD, the paper's victim protocol. Takes no options."""
    unknown = sorted(set(options or {}))
    if unknown:
        raise UnlearnableError(f"protocol st takes no options, got {', '.join(unknown)}")
    return train_victim(train, test, cfg, seed=seed, desc=desc, defenses=defenses, protocol="st")


#: Clean labelled images the early-stopping attacker holds out of the test set (50 a class on 10 classes).
ES_VAL_IMAGES = 500


@register_protocol("st-es")
def early_stopped_training(train: ImageDataset, test: ImageDataset, cfg: VictimConfig, *, seed: int = 0,
                           defenses=(), options: dict | None = None, desc: str = "victim (st-es)") -> TrainResult:
    """ST with early stopping: the attacker holds a few clean labelled images.

    ``val_images`` (default :data:`ES_VAL_IMAGES`, or a tenth of a smaller test set) test
    images, stratified by class and drawn
    with ``seed``, become the validation split the run stops on (the epoch with the best
    validation accuracy); the accuracy reported is on the rest of the test set, which the
    choice never saw. Victims learn real features and the perturbation's shortcut side by
    side early on (Dang et al., arXiv 2306.02064), so this can be far above the last epoch.
    """
    opts = dict(options or {})
    n = opts.pop("val_images", None)
    if n is None and test is not None:  # a tenth of a small test set, at most ES_VAL_IMAGES
        n = min(ES_VAL_IMAGES, max(1, len(test) // 10))
    if opts:
        raise UnlearnableError(f"protocol st-es takes only val_images, got {', '.join(sorted(opts))}")
    if test is None:
        raise UnlearnableError("victim training needs a test split (the data has none)")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < len(test):
        raise UnlearnableError(f"st-es val_images must be an integer in [1, {len(test) - 1}] (fewer than the "
                               f"{len(test)} test images), got {n!r}")
    val_idx = test.stratified_indices(n, seed)
    rest = np.setdiff1d(np.arange(len(test)), val_idx)
    return train_victim(train, test.take(rest), cfg, seed=seed, desc=desc, defenses=defenses, protocol="st-es",
                        val=test.take(val_idx))

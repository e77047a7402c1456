"""Standard training (ST) of a victim model and its evaluation on clean test data."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import torch

from ..data.augment import build_augment
from ..data.dataset import ImageDataset
from ..errors import UnlearnableError
from ..models import build_model
from ..progress import bar
from ..runtime import make_generator, prepare_model, resolve_device, seed_everything
from .loops import TensorData, evaluate, num_batches, sgd_cosine, train_epoch


@dataclass
class VictimConfig:
    model: str = "cnn"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_min: float = 1e-6
    augment: str = "none"  # CPU default; see docs/mi-ue.md (crop costs accuracy on 28 px grey data)
    crop_padding: int = 4
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = True

    def validate(self):
        for k in ("epochs", "batch_size"):
            if getattr(self, k) <= 0:
                raise UnlearnableError(f"victim {k} must be positive, got {getattr(self, k)}")
        if self.lr <= 0:
            raise UnlearnableError(f"victim lr must be positive, got {self.lr}")
        build_augment(self.augment, self.crop_padding)
        return self


# The paper's standard-training protocol (Appendix E.4) and the CPU default used by the demo.
VICTIM_PRESETS = {
    "paper-st": VictimConfig(model="resnet-18", epochs=200, batch_size=128, lr=0.5, weight_decay=1e-4,
                             augment="crop-flip", crop_padding=4),
    "cpu": VictimConfig(),
}


def victim_preset(name: str, **overrides) -> VictimConfig:
    if name not in VICTIM_PRESETS:
        raise UnlearnableError(f"unknown victim preset {name!r}; choose from {sorted(VICTIM_PRESETS)}")
    return replace(VICTIM_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}).validate()


@dataclass
class TrainResult:
    test_acc: float
    train_acc: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None

    def metrics(self) -> dict:
        return {"test_acc": self.test_acc, "train_acc": self.train_acc, "seconds": round(self.seconds, 2),
                "history": self.history, "config": self.config}


def train_victim(train: ImageDataset, test: ImageDataset, cfg: VictimConfig, *, seed: int = 0,
                 desc: str = "victim") -> TrainResult:
    """Train ``cfg.model`` from scratch on ``train`` and record per-epoch clean test accuracy."""
    cfg.validate()
    if test is None:
        raise UnlearnableError("victim training needs a test split (the data has none)")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise UnlearnableError(f"train images {train.images.shape[1:]} and test images {test.images.shape[1:]} differ")
    device = resolve_device(cfg.device)
    seed_everything(seed)
    gen = make_generator(seed)
    model = build_model(cfg.model, train.channels, train.num_classes, train.image_size[0])
    model = prepare_model(model, device, cfg.channels_last)
    opt, sched = sgd_cosine(model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                            epochs=cfg.epochs, lr_min=cfg.lr_min)
    augment = build_augment(cfg.augment, cfg.crop_padding)
    tr, te = TensorData.from_dataset(train, device), TensorData.from_dataset(test, device)
    history = []
    t0 = time.time()
    steps = cfg.epochs * num_batches(len(tr), cfg.batch_size)
    with bar(total=steps, desc=desc, unit="batch") as pb:
        for epoch in range(cfg.epochs):
            loss, train_acc = train_epoch(model, opt, tr, batch_size=cfg.batch_size, generator=gen, augment=augment,
                                          bf16=cfg.bf16, channels_last=cfg.channels_last, on_batch=pb.update)
            sched.step()
            test_acc = evaluate(model, te, bf16=cfg.bf16, channels_last=cfg.channels_last)
            history.append({"epoch": epoch + 1, "loss": round(loss, 5), "train_acc": round(train_acc, 5),
                            "test_acc": round(test_acc, 5), "seconds": round(time.time() - t0, 2)})
            pb.set_postfix(train=f"{train_acc:.3f}", test=f"{test_acc:.3f}")
    clean_train_acc = evaluate(model, tr, bf16=cfg.bf16, channels_last=cfg.channels_last)
    return TrainResult(test_acc=history[-1]["test_acc"], train_acc=clean_train_acc, history=history,
                       seconds=time.time() - t0, config=asdict(cfg), model=model)

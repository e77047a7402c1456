"""A SimCLR victim: contrastive pre-training, then a linear probe (protocol ``simclr``).

SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020): each image gives two random views
(:class:`~unlearnable.data.contrastive.ContrastiveAugment`); a backbone ``f`` (any
registered model's ``features``) and a projection head ``g`` (Linear-BN-ReLU-Linear to
``proj_dim``) are trained with the NT-Xent loss at temperature ``temperature``: for each
of the 2B views, cross-entropy of its cosine similarity to its partner against its
similarities to all 2B - 1 other views (partner included). Labels are never used.

The victim is then scored the way the paper (Zhu et al., arXiv:2603.03725, Appendix
G.4, Table 20) and SimCLR do: a linear classifier on the frozen backbone features,
trained on the (possibly protected) training images and their labels, evaluated on the
clean test set. The probe's test accuracy is the victim's ``test_acc``.

Defaults. ``paper-cifar10``: ResNet-18, 1000 epochs, batch 512, temperature 0.5,
projection to 128 (SimCLR's CIFAR-10 setting, its Appendix B.9; the MI-UE paper gives
no SimCLR details), colour strength 0.5, no blur, learning rate 0.3 x batch / 256
(SimCLR's scaling rule). Our choices: SGD (momentum 0.9, weight decay 5e-4, cosine)
instead of LARS, which is meant for batches of thousands; a 100-epoch probe.
``cpu`` (the embedded 28 px Fashion-MNIST subset in minutes): the 4-conv CNN, 15
epochs, batch 256, lr 0.3, a 50-epoch probe with batch 512 (our choices, see
docs/simclr.md). The probe (our choices): features computed once without augmentation
and standardised with the training set's mean and deviation, then a linear layer
trained with SGD (momentum 0.9, lr 0.1, cosine) and cross-entropy; it becomes the
backbone's own linear head, so the victim is an ordinary registered model.

The protocol takes its training recipe from the victim config, like ``st`` and ``at``;
this module adds the victim presets ``cpu-simclr`` and ``paper-simclr`` (the recipes
above) to the ``cpu`` and ``paper`` preset families.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..data.contrastive import ContrastiveAugment
from ..errors import UnlearnableError
from ..models import FeatureModel, build_model
from ..progress import bar
from ..runtime import autocast, make_generator, prepare_model, resolve_device, seed_everything, to_model_input
from .loops import TensorData, batches, num_batches, sgd_cosine
from .protocols import register_protocol
from .standard import PRESET_FAMILIES, VICTIM_PRESETS, TrainResult, VictimConfig, apply_data_defenses


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """The NT-Xent loss of SimCLR for two (B, D) batches of projections, view i of z1
    paired with view i of z2; the mean over all 2B anchors."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (z @ z.t()) / temperature
    self_pair = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_pair, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, partner)


class SimCLRNet(nn.Module):
    """A backbone's ``features`` followed by SimCLR's projection head."""

    def __init__(self, backbone: FeatureModel, proj_dim: int = 128, hidden: int | None = None):
        super().__init__()
        d = backbone.feature_dim
        hidden = hidden or d
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden),
                                       nn.ReLU(inplace=True), nn.Linear(hidden, proj_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone.features(x))


def contrastive_loss(net: SimCLRNet, x: torch.Tensor, augment, generator, *, temperature: float,
                     bf16: bool = False, channels_last: bool = False) -> torch.Tensor:
    """NT-Xent of two random views of ``x`` (both views in one forward pass, so BatchNorm
    sees them together, as in SimCLR)."""
    views = torch.cat([augment(x, generator), augment(x, generator)])
    with autocast(views.device, bf16):
        z = net(to_model_input(views, channels_last))
    return nt_xent(z[: len(x)], z[len(x):], temperature)


def simclr_steps(net, opt, data: TensorData, augment, generator, *, steps: int | None, batch_size: int,
                 temperature: float, delta: torch.Tensor | None = None, bf16=False, channels_last=False,
                 on_batch=None) -> float:
    """SGD on the contrastive loss: one shuffled pass (``steps`` None) or exactly ``steps``
    batches (fresh shuffles as needed). Images are ``x + delta`` when ``delta`` is given.
    The last batch of a pass is dropped when short (a 1-image batch breaks BatchNorm).
    Returns the mean loss."""
    net.train()
    total, done = torch.zeros((), device=data.x.device), 0
    while True:
        for idx in batches(len(data), batch_size, generator, data.x.device, drop_last=True):
            x, _ = data.batch(idx)
            if delta is not None:
                x = (x + delta[idx]).clamp_(0, 1)
            loss = contrastive_loss(net, x, augment, generator, temperature=temperature, bf16=bf16,
                                    channels_last=channels_last)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            done += 1
            if on_batch is not None:
                on_batch()
            if steps is not None and done >= steps:
                return float(total) / done
        if steps is None:
            return float(total) / max(1, done)


@torch.no_grad()
def extract_features(model, data: TensorData, *, batch_size: int = 512, bf16=False,
                     channels_last=False) -> torch.Tensor:
    """Backbone features (N, D) of ``data`` in eval mode, float32 on the data's device."""
    model.eval()
    out = []
    for idx in batches(len(data), batch_size, None, data.x.device):
        x, _ = data.batch(idx)
        with autocast(data.x.device, bf16):
            out.append(model.features(to_model_input(x, channels_last)).float())
    return torch.cat(out)


class ProbeHead(nn.Module):
    """Standardisation with fixed training statistics, then a linear classifier."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear((z - self.mean) / self.std)


def fit_linear_probe(z: torch.Tensor, y: torch.Tensor, num_classes: int, *, epochs: int = 100, lr: float = 0.1,
                     batch_size: int = 256, weight_decay: float = 0.0,
                     generator: torch.Generator | None = None) -> ProbeHead:
    """Train a linear classifier on frozen features ``z`` (N, D) with labels ``y``."""
    mean, std = z.mean(0), z.std(0).clamp_min(1e-6)
    head = ProbeHead(mean, std, num_classes).to(z.device)
    opt, sched = sgd_cosine(head, lr=lr, momentum=0.9, weight_decay=weight_decay,
                            epochs=epochs * num_batches(len(z), batch_size), lr_min=0.0)
    head.train()
    for _ in range(epochs):
        for idx in batches(len(z), batch_size, generator, z.device):
            loss = F.cross_entropy(head(z[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


@torch.no_grad()
def probe_accuracy(head: ProbeHead, z: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[float, list[float]]:
    """Overall accuracy and per-class accuracy (NaN for a class with no samples)."""
    hit = (head(z).argmax(1) == y).float()
    per = torch.zeros(num_classes, device=z.device).index_add_(0, y, hit)
    cnt = torch.bincount(y, minlength=num_classes).float()
    return float(hit.mean()), [round(float(p / c), 5) if c > 0 else float("nan") for p, c in zip(per, cnt)]


class ProbedModel(FeatureModel):
    """The SimCLR backbone with its linear probe as the head: ``model(x)`` gives class logits,
    so the victim can be evaluated and measured like any supervised one."""

    def __init__(self, backbone: FeatureModel, probe: ProbeHead):
        super().__init__()
        self.backbone, self.probe = backbone, probe
        self.feature_dim = backbone.feature_dim

    def features(self, x):
        return self.backbone.features(x)

    def head(self, z):
        return self.probe(z)


@dataclass
class SimCLRConfig:
    model: str = "cnn"
    epochs: int = 15  # 0: no pre-training, probe the randomly initialised backbone (a reference)
    batch_size: int = 256
    lr: float = 0.3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_min: float = 0.0
    temperature: float = 0.5
    proj_dim: int = 128
    proj_hidden: int | None = None  # None: the backbone's feature dimension
    crop_scale_min: float | None = None  # None: by image size (data/contrastive.py)
    strength: float | None = None  # colour-jitter strength; None: by image size
    blur: bool | None = None  # None: only for images over 64 px
    probe_epochs: int = 50
    probe_lr: float = 0.1
    probe_batch_size: int = 512
    probe_weight_decay: float = 0.0
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = True

    def validate(self) -> "SimCLRConfig":
        for k in ("batch_size", "proj_dim", "probe_epochs", "probe_batch_size"):
            if int(getattr(self, k)) <= 0:
                raise UnlearnableError(f"simclr: {k} must be positive, got {getattr(self, k)}")
        if self.epochs < 0:
            raise UnlearnableError(f"simclr: epochs must be >= 0 (0: probe the untrained backbone), got {self.epochs}")
        if self.batch_size < 2:
            raise UnlearnableError("simclr: batch_size must be at least 2 (negatives come from the batch)")
        if self.lr <= 0 or self.probe_lr <= 0 or self.temperature <= 0:
            raise UnlearnableError("simclr: lr, probe_lr and temperature must be positive")
        return self

    def augment(self, image_size: int, channels: int) -> ContrastiveAugment:
        return ContrastiveAugment(image_size, channels, crop_scale_min=self.crop_scale_min,
                                  strength=self.strength, blur=self.blur)


SIMCLR_PRESETS = {
    "cpu": SimCLRConfig(),
    "paper-cifar10": SimCLRConfig(model="resnet-18", epochs=1000, batch_size=512, lr=0.6, temperature=0.5,
                                  proj_dim=128, probe_epochs=100),
}


def simclr_preset(name: str, **overrides) -> SimCLRConfig:
    if name not in SIMCLR_PRESETS:
        raise UnlearnableError(f"unknown simclr preset {name!r}; choose from {sorted(SIMCLR_PRESETS)}")
    fields = set(SimCLRConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UnlearnableError(f"simclr: unknown option(s) {unknown}; choose from {sorted(fields)}")
    return replace(SIMCLR_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}).validate()


def fold_probe(backbone: FeatureModel, probe: ProbeHead) -> FeatureModel:
    """The victim as one registered model: the probe (standardisation folded into the weights)
    written into the backbone's own linear head, so it saves and reloads like any model.
    Falls back to :class:`ProbedModel` for a model whose head is not a plain linear layer."""
    w = probe.linear.weight / probe.std
    b = probe.linear.bias - w @ probe.mean
    z = torch.randn(4, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.device)
    for m in backbone.modules():
        if isinstance(m, nn.Linear) and m.weight.shape == w.shape and m.bias is not None:
            old = (m.weight.detach().clone(), m.bias.detach().clone())
            with torch.no_grad():
                m.weight.copy_(w)
                m.bias.copy_(b)
                if torch.allclose(backbone.head(z), probe(z), atol=1e-4, rtol=1e-4):
                    return backbone
                m.weight.copy_(old[0])
                m.bias.copy_(old[1])
    return ProbedModel(backbone, probe)


def train_simclr(train, test, cfg: SimCLRConfig, *, seed: int = 0, defenses=(), desc: str = "simclr") -> TrainResult:
    """Pre-train SimCLR on ``train``'s images, fit a linear probe on its labels, score on ``test``.

    ``defenses``: data defenses transform the training set first; batch defenses (label-
    mixing augmentations of supervised training) do not apply to contrastive pre-training
    and are refused. The result's ``model`` is the backbone with the probe as its head.
    """
    cfg.validate()
    if test is None:
        raise UnlearnableError("simclr victim needs a test split (the data has none)")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise UnlearnableError(f"train images {train.images.shape[1:]} and test images {test.images.shape[1:]} differ")
    if len(train) < 2:
        raise UnlearnableError("simclr needs at least 2 training images")
    defenses = list(defenses)
    for d in defenses:
        if d.kind != "data":
            raise UnlearnableError(f"simclr: defense {d.describe()!r} is a batch defense; the simclr protocol "
                                   f"takes data defenses only")
    device = resolve_device(cfg.device)
    t0 = time.time()
    train, defense_seconds = apply_data_defenses(train, defenses, seed=seed, device=device)
    seed_everything(seed)
    gen = make_generator(seed)
    backbone = build_model(cfg.model, train.channels, train.num_classes, train.image_size[0])
    net = prepare_model(SimCLRNet(backbone, cfg.proj_dim, cfg.proj_hidden), device, cfg.channels_last)
    batch_size = min(cfg.batch_size, len(train))
    opt, sched = sgd_cosine(net, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                            epochs=cfg.epochs, lr_min=cfg.lr_min)
    augment = cfg.augment(max(train.image_size), train.channels)
    tr, te = TensorData.from_dataset(train, device), TensorData.from_dataset(test, device)
    history = []
    with bar(total=cfg.epochs * num_batches(len(tr), batch_size, drop_last=True), desc=desc, unit="batch") as pb:
        for epoch in range(cfg.epochs):
            loss = simclr_steps(net, opt, tr, augment, gen, steps=None, batch_size=batch_size,
                                temperature=cfg.temperature, bf16=cfg.bf16, channels_last=cfg.channels_last,
                                on_batch=pb.update)
            history.append({"epoch": epoch + 1, "contrastive_loss": round(loss, 5),
                            "lr": round(opt.param_groups[0]["lr"], 6), "seconds": round(time.time() - t0, 2)})
            sched.step()
            pb.set_postfix(loss=f"{loss:.3f}")
    flags = dict(bf16=cfg.bf16, channels_last=cfg.channels_last)
    z_tr, z_te = extract_features(backbone, tr, **flags), extract_features(backbone, te, **flags)
    probe = fit_linear_probe(z_tr, tr.y, train.num_classes, epochs=cfg.probe_epochs, lr=cfg.probe_lr,
                             batch_size=cfg.probe_batch_size, weight_decay=cfg.probe_weight_decay, generator=gen)
    train_acc, _ = probe_accuracy(probe, z_tr, tr.y, train.num_classes)
    test_acc, per_class = probe_accuracy(probe, z_te, te.y, train.num_classes)
    history.append({"stage": "linear-probe", "probe_epochs": cfg.probe_epochs, "train_acc": round(train_acc, 5),
                    "test_acc": round(test_acc, 5), "test_acc_per_class": per_class,
                    "seconds": round(time.time() - t0, 2)})
    extra = {"defense_seconds": defense_seconds} if defense_seconds else {}
    return TrainResult(test_acc=round(test_acc, 5), train_acc=round(train_acc, 5), history=history,
                       seconds=time.time() - t0, config=asdict(cfg), model=fold_probe(backbone, probe).eval(),
                       protocol="simclr", defenses=[d.describe() for d in defenses], extra=extra)


# The victim config's training recipe, which the protocol takes over (CLI --epochs, --lr, ...).
RECIPE = ("model", "epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_min", "device", "bf16",
          "channels_last")


@register_protocol("simclr")
def simclr_protocol(train, test, cfg: VictimConfig | None = None, *, seed: int = 0, defenses=(),
                    options: dict | None = None, desc: str = "victim (simclr)") -> TrainResult:
    """The ``simclr`` protocol. The victim config ``cfg`` gives the pre-training recipe
    (:data:`RECIPE`: backbone, epochs, batch, SGD settings, device flags); SimCLR's own
    settings (temperature, projection, augmentation, probe) come from the SimCLR preset
    named ``simclr_preset`` (default ``cpu``) in ``options`` or ``cfg.protocol_options``.
    ``options`` may override any :class:`SimCLRConfig` field; from ``cfg.protocol_options``
    only SimCLR's keys are read (another protocol's settings are ignored). Without ``cfg``
    the SimCLR preset is used whole.
    """
    if cfg is not None and cfg.init is not None:
        raise UnlearnableError("protocol simclr pre-trains its own backbone; it does not start from a checkpoint "
                               "(init); use st, st-es or at with init")
    known = set(SimCLRConfig.__dataclass_fields__) | {"simclr_preset"}
    opts = {k: v for k, v in (cfg.protocol_options if cfg is not None else {}).items() if k in known}
    opts.update(options or {})
    preset = opts.pop("simclr_preset", "cpu")
    recipe = {k: getattr(cfg, k) for k in RECIPE} if cfg is not None else {}
    sc = simclr_preset(preset, **{**recipe, **opts})
    return train_simclr(train, test, sc, seed=seed, defenses=defenses, desc=desc)


def _victim_preset(simclr_name: str) -> VictimConfig:
    sc = SIMCLR_PRESETS[simclr_name]
    return VictimConfig(**{k: getattr(sc, k) for k in RECIPE}, protocol_options={"simclr_preset": simclr_name})


# Victim presets for the protocol, in the cpu and paper families (``--protocol simclr
# --preset cpu|paper`` picks them, as cpu-at/paper-at for AT).
VICTIM_PRESETS.setdefault("cpu-simclr", _victim_preset("cpu"))
VICTIM_PRESETS.setdefault("paper-simclr", _victim_preset("paper-cifar10"))
PRESET_FAMILIES["cpu"].setdefault("simclr", "cpu-simclr")
PRESET_FAMILIES["paper"].setdefault("simclr", "paper-simclr")

"""The SimCLR victim: NT-Xent against a naive reference, the linear probe at chance on
random labels, the contrastive augmentations, and the ``simclr`` protocol end to end."""

import math

import numpy as np
import pytest
import torch

from conftest import make_learnable
from unlearnable.data.contrastive import ContrastiveAugment
from unlearnable.data.dataset import ImageDataset
from unlearnable.defenses.base import Defense
from unlearnable.errors import UnlearnableError
from unlearnable.models import model_names, register_model
from unlearnable.models.checkpoint import load_model, save_model
from unlearnable.models.cnn import ConvNet4
from unlearnable.train.protocols import get_protocol, protocol_names
from unlearnable.train.simclr import SIMCLR_PRESETS, fit_linear_probe, nt_xent, probe_accuracy, simclr_preset
from unlearnable.train.standard import PRESET_FAMILIES, TrainResult, preset_name, victim_preset

if "test-cnn-w8" not in model_names():
    register_model("test-cnn-w8")(lambda **kw: ConvNet4(width=8, **kw))


def nt_xent_reference(z1, z2, t):
    """SimCLR's loss written out term by term: for each of the 2N views, -log of its
    partner's exp(cos / t) over the sum of exp(cos / t) over every other view."""
    views = [list(map(float, v)) for v in torch.cat([z1, z2])]
    n = len(z1)

    def cos(a, b):
        dot = sum(p * q for p, q in zip(a, b))
        return dot / (math.sqrt(sum(p * p for p in a)) * math.sqrt(sum(q * q for q in b)))

    total = 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        denom = sum(math.exp(cos(views[i], views[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(cos(views[i], views[partner]) / t) / denom)
    return total / (2 * n)


@pytest.mark.parametrize("n,d,t", [(5, 7, 0.5), (3, 2, 0.1), (8, 16, 1.0)])
def test_nt_xent_equals_reference(n, d, t):
    g = torch.Generator().manual_seed(n * d)
    z1, z2 = torch.randn(n, d, generator=g) * 3, torch.randn(n, d, generator=g)
    assert nt_xent(z1, z2, t).item() == pytest.approx(nt_xent_reference(z1, z2, t), rel=1e-5)
    # Perfectly aligned, well-separated views score lower than random ones.
    assert nt_xent(z1, z1, t) < nt_xent(z1, z2, t)


def test_linear_probe_is_at_chance_on_random_labels_and_learns_real_ones():
    g = torch.Generator().manual_seed(0)
    k, d = 4, 32
    images = torch.rand(3000, 1, 8, 8, generator=g)
    projection = torch.randn(64, d, generator=g)  # untrained, frozen random features
    z = images.flatten(1) @ projection
    z_tr, z_te = z[:1000], z[1000:]
    y_random = torch.randint(0, k, (3000,), generator=g)
    head = fit_linear_probe(z_tr, y_random[:1000], k, epochs=20, batch_size=256, generator=g)
    acc, per_class = probe_accuracy(head, z_te, y_random[1000:], k)
    assert abs(acc - 1 / k) < 0.05, acc  # 2000 test labels: chance +- 4.5 standard errors
    assert len(per_class) == k
    # The same probe does learn a linear rule in the same features.
    w = torch.randn(d, k, generator=g)
    y_true = (z @ w).argmax(1)
    head = fit_linear_probe(z_tr, y_true[:1000], k, epochs=20, batch_size=256, generator=g)
    assert probe_accuracy(head, z_te, y_true[1000:], k)[0] > 0.85


@pytest.mark.parametrize("size,channels", [(8, 1), (16, 3), (96, 3)])
def test_augmentations_keep_shape_range_and_seed(size, channels):
    aug = ContrastiveAugment(size, channels)
    assert aug.blur == (size > 64)
    x = torch.rand(6, channels, size, size, generator=torch.Generator().manual_seed(1))
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Differentiable with respect to the input (attacks take gradients through the views).
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(aug(xg, torch.Generator().manual_seed(7)).sum(), xg)
    assert grad.abs().sum() > 0


def test_augmentation_ops_do_what_they_say():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g)
    # Always grey: every channel equal.
    grey = ContrastiveAugment(16, 3, gray_p=1.0)(x, g)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    # No jitter, no grey: a constant image stays constant under crop and flip.
    flat = torch.full((4, 3, 16, 16), 0.3)
    assert torch.allclose(ContrastiveAugment(16, 3, strength=0.0, gray_p=0.0)(flat, g), flat, atol=1e-6)
    # Grey images never get colour ops; a wrong channel count is refused.
    assert ContrastiveAugment(16, 1)(x[:, :1], g).shape == (8, 1, 16, 16)
    with pytest.raises(UnlearnableError, match="channels"):
        ContrastiveAugment(16, 1)(x, g)
    with pytest.raises(UnlearnableError, match="crop_scale_min"):
        ContrastiveAugment(16, 3, crop_scale_min=0.0)


def _tiny_splits():
    x, y = make_learnable(96, size=16, channels=1, classes=4, seed=3)
    names = ["a", "b", "c", "d"]
    return ImageDataset(x[:64], y[:64], names), ImageDataset(x[64:], y[64:], names)


class _Mixing(Defense):
    name, kind = "test-mix", "batch"


def test_simclr_protocol_end_to_end(tmp_path):
    assert "simclr" in protocol_names() and {"cpu", "paper-cifar10"} <= set(SIMCLR_PRESETS)
    assert SIMCLR_PRESETS["paper-cifar10"].model == "resnet-18" and SIMCLR_PRESETS["paper-cifar10"].epochs == 1000
    # --preset cpu|paper with --protocol simclr picks the SimCLR recipes.
    assert victim_preset(preset_name("simclr", "paper")).epochs == 1000 and "simclr" in PRESET_FAMILIES["cpu"]
    assert victim_preset(preset_name("simclr", None)).protocol_options == {"simclr_preset": "cpu"}
    train, test = _tiny_splits()
    cfg = victim_preset("cpu", model="test-cnn-w8", device="cpu", channels_last=False)
    run = get_protocol("simclr")
    opts = {"epochs": 2, "batch_size": 32, "probe_epochs": 10}
    r = run(train, test, cfg, seed=0, defenses=[], options=opts)
    assert isinstance(r, TrainResult) and 0 <= r.test_acc <= 1
    assert [h["epoch"] for h in r.history[:-1]] == [1, 2]
    assert all(math.isfinite(h["contrastive_loss"]) for h in r.history[:-1])
    probe = r.history[-1]
    assert probe["stage"] == "linear-probe" and probe["test_acc"] == r.test_acc
    assert r.config["model"] == "test-cnn-w8" and r.config["epochs"] == 2
    # The returned model is the backbone with the probe as its head: its logits reproduce the
    # reported accuracy, and it saves and reloads like any registered model.
    assert isinstance(r.model, ConvNet4)
    save_model(r.model, tmp_path / "m", name="test-cnn-w8", in_channels=1, num_classes=4, image_size=16)
    reloaded, _ = load_model(tmp_path / "m")
    with torch.no_grad():
        xt = torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 255
        pred = reloaded(xt).argmax(1).numpy()
    assert np.mean(pred == test.labels) == pytest.approx(r.test_acc, abs=1e-4)
    again = run(train, test, cfg, seed=0, defenses=[], options=opts)
    losses = lambda res: [h["contrastive_loss"] for h in res.history[:-1]]  # noqa: E731
    assert again.test_acc == r.test_acc and losses(again) == losses(r)
    # epochs 0: the probe on the untrained backbone, the reference for what pre-training adds.
    untrained = run(train, test, cfg, seed=0, defenses=[], options=dict(opts, epochs=0))
    assert [h.get("stage") for h in untrained.history] == ["linear-probe"]
    with pytest.raises(UnlearnableError, match="batch defense"):
        run(train, test, cfg, seed=0, defenses=[_Mixing()], options=opts)
    with pytest.raises(UnlearnableError, match="unknown option"):
        run(train, test, cfg, seed=0, defenses=[], options={"epoch": 2})
    with pytest.raises(UnlearnableError, match="unknown simclr preset"):
        simclr_preset("paper-imagenet")

"""TUE and A-MI-UE: budget on disk, seeding, resume, the CSD term, the contrastive hook."""

import dataclasses
import sys

import numpy as np
import pytest
from conftest import crash_then_resume
import torch

from unlearnable.attacks import get_attack
from unlearnable.attacks.a_mi_ue import AMIUEConfig
from unlearnable.attacks.mi_ue import MIUE
from unlearnable.attacks.tue import class_separability
from unlearnable.data import load_dataset, quantize, read_poisoned
from unlearnable.data.contrastive import ContrastiveAugment
from unlearnable.data.dataset import ImageDataset
from unlearnable.data.poisoned import budget_levels
from unlearnable.errors import UnlearnableError
from unlearnable.models import model_names, register_model
from unlearnable.models.cnn import ConvNet4
from unlearnable.poison import poison_dataset

if "test-cnn-w8" not in model_names():
    register_model("test-cnn-w8")(lambda **kw: ConvNet4(width=8, **kw))

_SRC = dict(model="test-cnn-w8", device="cpu", channels_last=False, batch_size=64)
FAST = {
    "tue": dict(_SRC, epochs=2, train_steps=2, pgd_steps=2, step_size=2 / 255),
    "a-mi-ue": dict(_SRC, epochs=2, pgd_steps=2, step_size=2 / 255, forward_chunk=32),
}


@pytest.mark.parametrize("method", sorted(FAST))
def test_budget_on_disk_and_same_seed(method, tiny_npz, tmp_path):
    m = poison_dataset(method, str(tiny_npz), tmp_path / "out", seed=0, overrides=FAST[method])
    back = read_poisoned(tmp_path / "out")
    assert m["method"] == method and m["norm"] == "linf"
    assert int(np.abs(back.delta).max()) == m["linf_255"] and 0 < m["linf_255"] <= budget_levels(8 / 255)
    train = load_dataset(tiny_npz).train
    attack = get_attack(method).from_preset("cpu", **FAST[method])  # as poison_dataset builds it
    again = quantize(train.images, attack.generate(train, seed=0).delta, attack.config.eps)
    np.testing.assert_array_equal(again, back.poisoned.images)
    other = quantize(train.images, attack.generate(train, seed=1).delta, attack.config.eps)
    assert not np.array_equal(other, again)


@pytest.mark.parametrize("method", sorted(FAST))
def test_resume_after_crash_is_bit_identical(method, tiny_npz, tmp_path, monkeypatch):
    train = load_dataset(tiny_npz).train
    over = dict(FAST[method], epochs=3)
    full, resumed = crash_then_resume(lambda: get_attack(method)(**over), train, tmp_path, monkeypatch)
    assert resumed.info["resumed_from_epoch"] == 2 and len(resumed.info["history"]) == 3
    assert torch.equal(resumed.delta, full.delta)
    with pytest.raises(UnlearnableError, match="checkpoint was made with other"):
        get_attack(method)(**over).generate(train, seed=3, workdir=tmp_path, resume=True)


def test_rgb_images_and_budget_in_memory():
    rng = np.random.default_rng(0)
    ds = ImageDataset(rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), np.arange(12) % 3, ["a", "b", "c"])
    x = torch.from_numpy(ds.images).permute(0, 3, 1, 2).float() / 255
    for method in sorted(FAST):
        attack = get_attack(method)(**dict(FAST[method], epochs=1, batch_size=6))
        d = attack.generate(ds, seed=0).delta
        assert d.shape == (12, 3, 16, 16) and torch.isfinite(d).all(), method
        assert d.abs().max() <= attack.config.eps + 1e-6 and 0 <= (x + d).min() and (x + d).max() <= 1 + 1e-6


def csd_reference(delta, y):
    """TUE's CSD written out: mean over ordered class pairs of (sigma_i + sigma_j) / d(c_i, c_j)."""
    flat = delta.reshape(len(delta), -1).double()
    classes = sorted(set(y.tolist()))
    centre = {c: flat[y == c].mean(0) for c in classes}
    sigma = {c: (flat[y == c] - centre[c]).norm(dim=1).mean() for c in classes}
    terms = [(sigma[i] + sigma[j]) / (centre[i] - centre[j]).norm() for i in classes for j in classes if i != j]
    return float(sum(terms) / len(terms))


def test_class_separability_matches_reference_and_rewards_separable_noise():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(30, 1, 4, 4, generator=g)
    y = torch.tensor([0, 2, 3] * 10)  # class 1 absent from the batch
    assert class_separability(delta, y, 4).item() == pytest.approx(csd_reference(delta, y), rel=1e-5)
    patterns = torch.randn(4, 1, 4, 4, generator=g) * 3
    separable = patterns[y] + 0.1 * torch.randn(30, 1, 4, 4, generator=g)
    assert class_separability(separable, y, 4) < 0.1 * class_separability(delta, y, 4)
    assert class_separability(delta, torch.zeros(30, dtype=torch.long), 4).item() == 0.0
    # Gradients stay finite where two class means coincide (zero perturbations).
    zero = torch.zeros(6, 1, 2, 2, requires_grad=True)
    class_separability(zero, torch.tensor([0, 1] * 3), 2).backward()
    assert torch.isfinite(zero.grad).all()


def test_a_mi_ue_is_mi_ue_with_contrastive_augmentations(tiny_npz):
    cls = get_attack("a-mi-ue")
    assert issubclass(cls, MIUE) and set(cls.presets) == set(MIUE.presets)
    for name, base in MIUE.presets.items():
        cfg = cls.presets[name]
        assert cfg.train_augment == cfg.pgd_augment == "contrastive"
        same = [f.name for f in dataclasses.fields(base) if f.name not in ("train_augment", "pgd_augment")]
        assert all(getattr(cfg, k) == getattr(base, k) for k in same), name
    train = load_dataset(tiny_npz).train
    train_aug, pgd_aug = cls().augmentations(train)
    assert isinstance(train_aug, ContrastiveAugment) and isinstance(pgd_aug, ContrastiveAugment)
    assert pgd_aug.channels == 1 and pgd_aug.image_size == 16
    plain_train, _ = cls(train_augment="flip").augmentations(train)
    assert not isinstance(plain_train, ContrastiveAugment)
    with pytest.raises(UnlearnableError):
        AMIUEConfig(pgd_augment="jitter").validate()
    for name in ("tue", "a-mi-ue"):
        doc = sys.modules[get_attack(name).__module__].__doc__
        assert "Defaults" in doc and ("2023" in doc or "2603.03725" in doc)
        get_attack(name).from_preset("paper-cifar10")
        with pytest.raises(UnlearnableError, match="eps must be in"):
            get_attack(name)(eps=0.0)

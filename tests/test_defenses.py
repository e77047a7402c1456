"""Every defense does what it claims, on a case where the effect is known."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from unlearnable.data.dataset import ImageDataset
from unlearnable.defenses import parse_defenses
from unlearnable.defenses.grayscale import luma
from unlearnable.defenses.jpeg import jpeg_round_trip
from unlearnable.defenses.op import fit_linear
from unlearnable.defenses.ueraser import equalize, ueraser_augment
from unlearnable.errors import UnlearnableError
from unlearnable.models.base import FeatureModel
from unlearnable.runtime import make_generator


def dataset(x, y, k):
    return ImageDataset(x, y, [str(i) for i in range(k)])


def smooth_images(n, s, c, rng):
    yy, xx = np.mgrid[0:s, 0:s]
    ramp = (90 + 4 * yy + 2 * xx)[None, :, :, None]
    return (ramp + rng.integers(-10, 10, (n, 1, 1, c))).astype(np.int16), yy, xx


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg10_removes_high_frequency_perturbation(channels):
    rng = np.random.default_rng(0)
    base, yy, xx = smooth_images(12, 16, channels, rng)
    checker = np.where((yy + xx) % 2 == 0, 8, -8)[None, :, :, None]  # the highest spatial frequency, 8/255
    clean, poisoned = base.astype(np.uint8), (base + checker).astype(np.uint8)
    d = parse_defenses("jpeg:10")[0]
    out = d.apply(dataset(poisoned, np.arange(12) % 2, 2)).images.astype(float)
    residual = out - jpeg_round_trip(clean, 10).astype(float)  # what is left of the perturbation
    delta = (poisoned.astype(float) - clean)
    assert (residual ** 2).sum() < 0.2 * (delta ** 2).sum()
    assert np.abs(out - clean).mean() < 8  # while the smooth image itself survives
    # a real JPEG round trip, image by image: identical to Pillow on one image
    one = poisoned[3, :, :, 0] if channels == 1 else poisoned[3]
    import io
    buf = io.BytesIO()
    Image.fromarray(one).save(buf, format="JPEG", quality=10)
    ref = np.asarray(Image.open(buf))
    assert np.array_equal(out[3].reshape(ref.shape), ref)


def test_grayscale_removes_colour_only_pattern():
    rng = np.random.default_rng(1)
    base = rng.integers(40, 200, (8, 8, 8, 3)).astype(np.int16)
    y = np.arange(8) % 2
    # class 1 gets a colour shift with (almost) zero luma: +10 red, -5 green
    shift = np.array([10, -5, 0])[None, None, None, :] * y[:, None, None, None]
    poisoned = (base + shift).astype(np.uint8)
    out = parse_defenses("grayscale")[0].apply(dataset(poisoned, y, 2)).images
    assert out.shape == poisoned.shape and (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    clean_luma = luma(base.astype(np.uint8)).astype(int)
    assert np.abs(out[..., 0].astype(int) - clean_luma).max() <= 1  # the pattern is gone
    assert np.abs(poisoned.astype(int) - base).max() == 10  # it was there
    ref = np.asarray(Image.fromarray(poisoned[5]).convert("L"))
    assert np.array_equal(out[5, :, :, 0], ref)  # the same luma as Pillow's
    grey = dataset(poisoned[..., :1], y, 2)
    assert parse_defenses("grayscale")[0].apply(grey) is grey  # grey data: nothing to do


def test_op_removes_classwise_linear_pattern():
    rng = np.random.default_rng(0)
    n, s, c, k = 400, 8, 3, 4
    y = np.arange(n) % k
    pattern = rng.choice([-24, 24], size=(k, s, s, c))
    x = np.clip(rng.integers(64, 192, (n, s, s, c)) + pattern[y], 0, 255).astype(np.uint8)
    op = parse_defenses("op")[0]
    out = op.apply(dataset(x, y, k)).images
    assert out.shape == x.shape and out.dtype == np.uint8
    # centred on the mean image: the brightness range of the untouched test set is kept
    assert abs(out.mean() - x.mean()) < 2 and op.clipped_fraction < 0.01
    q, _ = torch.linalg.qr(op.weights.T)
    for j in range(1, k):  # the class directions are (nearly) in the removed span
        d = torch.tensor((pattern[j] - pattern[0]).transpose(2, 0, 1).reshape(-1), dtype=torch.float)
        assert ((d - q @ (q.T @ d)).norm() / d.norm()) < 0.35

    def probe(images):  # a fresh linear model, fitted on 300 images, scored on 100 others
        w = fit_linear(images[:300], y[:300], k, iters=50)
        xt = torch.from_numpy(images[300:]).permute(0, 3, 1, 2).reshape(100, -1).float() / 255
        return float(((xt @ w.T).argmax(1).numpy() == y[300:]).mean())

    assert probe(x) > 0.9  # linearly learnable before
    assert probe(out) < 0.4  # chance (0.25) after


def test_cutout_zeroes_a_square():
    x = torch.ones(64, 3, 16, 16)
    y = torch.arange(64) % 4
    out, target = parse_defenses("cutout:4")[0].batch(None, x, y, make_generator(0))
    assert target is y
    hole = (out == 0).all(1)  # (B, H, W), the same in every channel
    assert ((out == 0) | (out == 1)).all()
    rows, cols = hole.any(2), hole.any(1)
    assert torch.equal(hole, rows[:, :, None] & cols[:, None, :])  # an axis-aligned rectangle
    assert (rows.sum(1) <= 4).all() and (cols.sum(1) <= 4).all()  # of side 4, clipped at borders
    assert (hole.sum((1, 2)) == 16).sum() > 10 and (hole.sum((1, 2)) > 0).all()
    default, _ = parse_defenses("cutout")[0].batch(None, x, y, make_generator(0))
    assert (default == 0).all(1).sum((1, 2)).max() == 64  # default: half the side, 8 x 8


class Linear(FeatureModel):
    """Logits are a fixed linear function of the mean pixel (for the tests' known losses)."""

    def __init__(self, k):
        super().__init__()
        self.feature_dim = 1
        self.fc = torch.nn.Linear(1, k)
        self.bn = torch.nn.BatchNorm1d(1)

    def features(self, x):
        return self.bn(x.mean((1, 2, 3))[:, None])

    def head(self, z):
        return self.fc(z)


def constant_batch(b):
    values = torch.linspace(0.05, 0.95, b)
    return values.view(b, 1, 1, 1).expand(b, 3, 8, 8).clone(), torch.arange(b)


def test_mixup_targets_sum_to_one_and_match_the_mix():
    x, y = constant_batch(8)
    out, t = parse_defenses("mixup")[0].batch(Linear(8), x, y, make_generator(3))
    assert t.shape == (8, 8) and torch.allclose(t.sum(1), torch.ones(8))
    for i in range(8):
        lam = float(t[i, i])
        others = [j for j in range(8) if j != i and t[i, j] > 0]
        mixed_with = others[0] if others else i
        assert len(others) <= 1
        expect = lam * x[i] + (1 - lam) * x[mixed_with] if others else x[i]
        assert torch.allclose(out[i], expect, atol=1e-6)
    assert 0 < float(t.max(1).values.min()) < 1  # a real mix happened


def test_cutmix_targets_match_pasted_area():
    x, y = constant_batch(8)
    out, t = parse_defenses("cutmix:1")[0].batch(Linear(8), x, y, make_generator(5))
    assert torch.allclose(t.sum(1), torch.ones(8))
    pasted = (out[:, 0] != x[:, 0]).float()  # (B, H, W)
    for i in range(8):
        own = float((out[i, 0] == x[i, 0, 0, 0]).float().mean())
        assert abs(own - float(t[i, i])) < 1e-6  # own-label weight = own-pixel fraction
        for j in torch.nonzero(t[i] > 0).flatten().tolist():
            if j != i:
                assert abs(float((out[i, 0] == x[j, 0, 0, 0]).float().mean()) - float(t[i, j])) < 1e-6
    box = pasted.amax(0)
    assert torch.equal(box.bool(), box.bool().any(1)[:, None] & box.bool().any(0)[None, :])  # one rectangle
    out0, t0 = parse_defenses("cutmix:0")[0].batch(Linear(8), x, y, make_generator(5))
    assert torch.equal(out0, x) and torch.equal(t0, torch.eye(8))  # probability 0: untouched, one-hot


def test_ueraser_trains_on_the_max_loss_copy():
    torch.manual_seed(0)
    model = Linear(2)
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[-3.0], [3.0]]))  # label 0 loses more on brighter images
        model.fc.bias.zero_()
    x = torch.rand(16, 3, 8, 8) * 0.5 + 0.25
    y = torch.zeros(16, dtype=torch.long)
    before = model.bn.running_mean.clone(), model.bn.running_var.clone(), int(model.bn.num_batches_tracked)
    d = parse_defenses("ueraser")[0]
    assert d.repeats == 5
    out, target = d.batch(model, x, y, make_generator(7))
    assert torch.equal(model.bn.running_mean, before[0]) and torch.equal(model.bn.running_var, before[1])
    assert int(model.bn.num_batches_tracked) == before[2] and model.training  # scoring left BN as it was
    g = make_generator(7)  # replay the draws: the same five copies, scored in train mode
    copies = torch.stack([ueraser_augment(x, g) for _ in range(5)])
    with torch.no_grad():
        losses = torch.stack([torch.nn.functional.cross_entropy(copy.deepcopy(model)(c), y, reduction="none")
                              for c in copies])
    pick = losses.argmax(0)
    assert torch.equal(out, copies[pick, torch.arange(16)]) and target is y
    assert len(set(pick.tolist())) > 1  # the choice is per sample
    assert not torch.equal(copies[0], x) and not torch.equal(copies[0], copies[1])  # strong, random augmentations
    lite, _ = parse_defenses("ueraser:1")[0].batch(model, x, y, make_generator(7))
    assert torch.equal(lite, copies[0])
    assert out.min() >= 0 and out.max() <= 1


def test_equalize_matches_pillow():
    rng = np.random.default_rng(2)
    img = np.clip(rng.normal(100, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
    ours = equalize(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    ref = np.asarray(ImageOps.equalize(Image.fromarray(img)))
    assert np.array_equal((ours[0].permute(1, 2, 0) * 255).round().byte().numpy(), ref)


@pytest.mark.parametrize("spec, needle", [("jpeg:abc", "an integer"), ("jpeg:0", "in [1, 95]"),
                                          ("grayscale:3", "takes no argument"), ("nope", "unknown defense"),
                                          ("mixup:-1", "mixup"), ("cutmix:2", "in [0.0, 1.0]"),
                                          ("ueraser:0", "in [1, 64]"), ("jpeg:10,", "empty defense")])
def test_bad_specs_are_one_line_errors(spec, needle):
    with pytest.raises(UnlearnableError, match=None) as e:
        parse_defenses(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_descriptions_round_trip():
    spec = "jpeg:20,grayscale,op,cutout:6,cutmix,mixup:0.4,ueraser:3"
    assert ",".join(d.describe() for d in parse_defenses(spec)) == spec

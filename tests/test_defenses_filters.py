"""The cheap filters (bdr, blur, noise): exact against a readable reference, and composable."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from conftest import make_learnable
from unlearnable.data.dataset import ImageDataset
from unlearnable.defenses import parse_defenses
from unlearnable.defenses.filters import gaussian_kernel
from unlearnable.errors import UnlearnableError
from unlearnable.runtime import make_generator
from unlearnable.train import train_victim, victim_preset


def dataset(x, y=None):
    y = np.arange(len(x)) % 2 if y is None else y
    return ImageDataset(x, y, ["a", "b"])


@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_bdr_is_pillow_posterize(bits):
    x = np.random.default_rng(0).integers(0, 256, (4, 9, 7, 3)).astype(np.uint8)
    out = parse_defenses(f"bdr:{bits}")[0].apply(dataset(x)).images
    ref = np.stack([np.asarray(ImageOps.posterize(Image.fromarray(im), bits)) for im in x])
    assert np.array_equal(out, ref)
    assert len(np.unique(out)) <= 2 ** bits


def test_bdr_removes_most_of_a_small_perturbation():
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 256, (20, 16, 16, 1)).astype(np.int16)
    delta = rng.choice([-8, 8], clean.shape)
    poisoned = np.clip(clean + delta, 0, 255).astype(np.uint8)
    d = parse_defenses("bdr")[0]
    assert d.describe() == "bdr:2"
    a, b = d.apply(dataset(clean.astype(np.uint8))).images, d.apply(dataset(poisoned)).images
    assert (a == b).mean() > 0.8  # an 8-level change crosses a 64-level step at most 1 time in 8


def reference_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Direct 2-D convolution with the outer product of the 1-D kernel, reflect padding."""
    k = gaussian_kernel(sigma).double().numpy()
    r = len(k) // 2
    k2 = np.outer(k, k)
    out = np.zeros(img.shape, dtype=np.float64)
    for c in range(img.shape[-1]):
        p = np.pad(img[..., c].astype(np.float64), r, mode="reflect")
        for i in range(img.shape[0]):
            for j in range(img.shape[1]):
                out[i, j, c] = (p[i:i + 2 * r + 1, j:j + 2 * r + 1] * k2).sum()
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
def test_blur_matches_direct_convolution(sigma):
    x = np.random.default_rng(2).integers(0, 256, (3, 12, 10, 3)).astype(np.uint8)
    out = parse_defenses(f"blur:{sigma}")[0].apply(dataset(x)).images
    for i in range(len(x)):
        diff = np.abs(out[i].astype(int) - reference_blur(x[i], sigma).astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float rounding at .5 only


def test_blur_default_is_apbench_and_changes_nothing():
    d = parse_defenses("blur")[0]
    assert d.describe() == "blur:0.1" and len(gaussian_kernel(0.1)) == 3
    x = np.random.default_rng(3).integers(0, 256, (5, 8, 8, 1)).astype(np.uint8)
    assert np.array_equal(d.apply(dataset(x)).images, x)
    assert len(gaussian_kernel(1.0)) == 3 and len(gaussian_kernel(1.5)) == 7


def test_blur_removes_a_checkerboard_and_keeps_flat_images():
    flat = np.full((2, 8, 8, 1), 120, np.uint8)
    assert np.array_equal(parse_defenses("blur:1")[0].apply(dataset(flat)).images, flat)
    yy, xx = np.mgrid[0:8, 0:8]
    checker = (120 + np.where((yy + xx) % 2 == 0, 8, -8))[None, :, :, None].repeat(2, 0).astype(np.uint8)
    out = parse_defenses("blur:1")[0].apply(dataset(checker)).images.astype(int)
    assert np.abs(out - 120).max() < 4  # the +-8 pattern is mostly averaged away


def test_noise_has_its_std_repeats_with_the_seed_and_stays_in_range():
    d = parse_defenses("noise:4")[0]
    assert d.describe() == "noise:4" and parse_defenses("noise")[0].describe() == "noise:8"
    x = torch.full((64, 1, 16, 16), 0.5)
    y = torch.arange(64)
    a, ya = d.batch(None, x.clone(), y, make_generator(0))
    b, _ = d.batch(None, x.clone(), y, make_generator(0))
    assert torch.equal(a, b) and torch.equal(ya, y)
    assert abs(float((a - 0.5).std()) - 4 / 255) < 0.1 * 4 / 255
    edge, _ = d.batch(None, torch.zeros(8, 1, 4, 4), y[:8], make_generator(1))
    assert float(edge.min()) == 0.0 and float(edge.max()) <= 1.0


@pytest.mark.parametrize("spec", ["bdr:0", "bdr:9", "bdr:2.5", "blur:0", "blur:-1", "blur:nan", "noise:-1",
                                  "noise:nan", "noise:x"])
def test_bad_filter_arguments_are_one_line_errors(spec):
    with pytest.raises(UnlearnableError) as e:
        parse_defenses(spec)
    assert "\n" not in str(e.value) and spec.partition(":")[0] in str(e.value)


def test_filters_compose_in_a_victim_run():
    x, y = make_learnable(200, seed=4)
    train, test = ImageDataset(x[:120], y[:120], list("abcd")), ImageDataset(x[120:], y[120:], list("abcd"))
    cfg = victim_preset("cpu", model="linear", epochs=1, batch_size=32, device="cpu")
    r = train_victim(train, test, cfg, seed=0, defenses=parse_defenses("bdr:4,blur:1,noise:2"))
    assert r.defenses == ["bdr:4", "blur:1", "noise:2"] and set(r.extra["defense_seconds"]) == {"bdr:4", "blur:1"}

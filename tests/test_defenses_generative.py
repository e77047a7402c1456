"""The learned purifiers D-VAE, AVA and LE on tiny smooth images with a known perturbation.

The "clean" images are smooth blobs (16x16 grey); the perturbation is a class-wise
+-16/255 random sign pattern: high-frequency, the classic unlearnable shortcut. How much
of it survives purification is measured as its remaining fraction
<purified - clean, delta> / <delta, delta> (1 for the poisoned input, 0 when gone).
"""

import numpy as np
import pytest
import torch

from unlearnable.data import ImageDataset
from unlearnable.defenses import parse_defenses
from unlearnable.defenses._denoiser import Diffusion, TinyUNet, load_denoiser, resolve_clean
from unlearnable.defenses.ava import AVA, AVAConfig
from unlearnable.defenses.dvae import DVAE, DisentangleVAE, DVAEConfig, train_dvae
from unlearnable.defenses.le import LE, LEConfig
from unlearnable.errors import UnlearnableError

CPU = torch.device("cpu")
NAMES = ["a", "b", "c", "d"]


def smooth_images(n, size=16, classes=4, seed=0):
    """Grey images of one bright Gaussian blob whose position depends on the class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy = size * (0.3 + 0.4 * (y % 2)) + rng.normal(0, 1.0, n)
    cx = size * (0.3 + 0.4 * (y // 2 % 2)) + rng.normal(0, 1.0, n)
    amp, sig = rng.uniform(150, 230, n), rng.uniform(size / 8, size / 5, n)
    img = amp[:, None, None] * np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2)
                                      / (2 * sig[:, None, None] ** 2)) + rng.uniform(10, 40, n)[:, None, None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)[..., None], y.astype(np.int64)


def remaining(clean, purified, delta):
    """Fraction of the perturbation ``delta`` still present in ``purified``."""
    d = delta.astype(np.float64)
    return float(((purified.astype(np.float64) - clean) * d).sum() / (d * d).sum())


def rms(a, b):
    return float(np.sqrt(((a.astype(np.float64) - b) ** 2).mean()))


@pytest.fixture(scope="module")
def data():
    x, y = smooth_images(96 + 384, seed=0)
    clean = ImageDataset(x[:96], y[:96], NAMES, source="tiny")
    rng = np.random.default_rng(1)
    pattern = rng.choice([-16, 16], size=(4, 16, 16, 1))
    poisoned_imgs = np.clip(clean.images.astype(np.int16) + pattern[clean.labels], 0, 255).astype(np.uint8)
    delta = poisoned_imgs.astype(np.int16) - clean.images  # what was actually added after clipping
    poisoned = ImageDataset(poisoned_imgs, clean.labels, NAMES, source="tiny-poisoned")
    held_out = ImageDataset(x[96:], y[96:], NAMES, source="tiny-held-out")
    return clean, poisoned, delta, held_out


TINY_DVAE = DVAEConfig(epochs=10, batch_size=32, width=16, latent=8, purify_batch=64)
TINY_DENOISER = dict(width=16, epochs=8, batch_size=32, n_clean=384)


@pytest.fixture(scope="module")
def denoiser_file(data, tmp_path_factory):
    """One small denoiser trained on the held-out clean images, cached for AVA and LE."""
    path = tmp_path_factory.mktemp("den") / "denoiser.safetensors"
    ava = AVA(AVAConfig(**TINY_DENOISER, steps=8, purify_batch=64), clean=data[3], cache=str(path))
    out = ava.apply(data[1], seed=0, device=CPU)
    return path, out, ava.info


def check_valid(out, ref):
    assert isinstance(out, ImageDataset)
    assert out.images.dtype == np.uint8 and out.images.shape == ref.images.shape
    assert (out.labels == ref.labels).all() and out.class_names == ref.class_names


def test_dvae_learns_and_removes_classwise_noise(data, tmp_path):
    clean, poisoned, delta, _ = data
    cache = tmp_path / "dvae.safetensors"
    d = DVAE(TINY_DVAE, cache=str(cache))
    out = d.apply(poisoned, seed=0, device=CPU)
    check_valid(out, poisoned)
    assert remaining(clean.images, poisoned.images, delta) == pytest.approx(1.0)
    assert remaining(clean.images, out.images, delta) < 0.3
    # the rate constraint holds: the KL settles near each stage's target
    kl1, kl2 = d.info["history"][0][-1]["kl"], d.info["history"][1][-1]["kl"]
    assert kl1 < TINY_DVAE.kl_target1 * 1.5 and kl2 < TINY_DVAE.kl_target2 * 1.5
    # the cache reproduces the same purification without training
    again = DVAE(TINY_DVAE, cache=str(cache))
    out2 = again.apply(poisoned, seed=0, device=CPU)
    assert again.info["trained"] is False and np.array_equal(out.images, out2.images)
    # a cache made for other images is refused
    with pytest.raises(UnlearnableError, match="other images"):
        DVAE(TINY_DVAE, cache=str(cache)).apply(clean, seed=0, device=CPU)


def test_dvae_reconstruction_improves_over_untrained(data):
    clean = data[0]
    cfg = DVAEConfig(epochs=6, batch_size=32, width=16, latent=8)
    x = clean.to_tensor()
    y = torch.from_numpy(clean.labels)

    def rec_mse(model):
        with torch.no_grad():
            return float(((model(x, y, torch.zeros(len(x), cfg.latent, 8, 8))[0] - x) ** 2).mean())

    torch.manual_seed(0)
    untrained = DisentangleVAE(1, 4, (16, 16), cfg.width, cfg.latent).eval()
    trained, history = train_dvae(clean.images, clean.labels, 4, cfg, 1.0, seed=0, device=CPU)
    assert rec_mse(trained) < 0.7 * rec_mse(untrained)
    assert history[-1]["rec_mse"] < history[0]["rec_mse"]


def test_denoiser_learns(data, denoiser_file):
    held_out = data[3]
    path, _, info = denoiser_file
    trained, meta = load_denoiser(path, channels=1, t_needed=100, device=CPU)
    diffusion, x0 = Diffusion(), held_out.to_tensor()[:128] * 2 - 1
    g = torch.Generator().manual_seed(5)
    t = torch.randint(1, 101, (len(x0),), generator=g)
    noise = torch.randn(x0.shape, generator=g)

    def eps_mse(model):
        with torch.no_grad():
            return float(((model(diffusion.q_sample(x0, t, noise), t) - noise) ** 2).mean())

    assert eps_mse(trained) < 0.6 * eps_mse(TinyUNet(1, meta["width"]))  # untrained: predicts zero noise
    history = info["denoiser_history"]
    assert history[-1]["eps_mse"] < history[0]["eps_mse"] and meta["t_max"] == 100


def test_ava_washes_out_the_perturbation(data, denoiser_file):
    clean, poisoned, delta, _ = data
    path, out, info = denoiser_file
    check_valid(out, poisoned)
    assert info["denoiser_trained"] and path.is_file()
    assert remaining(clean.images, out.images, delta) < 0.5
    # the same checkpoint loaded with ckpt= gives the same result for the same seed
    again = AVA(AVAConfig(**TINY_DENOISER, steps=8, purify_batch=64), ckpt=str(path))
    out2 = again.apply(poisoned, seed=0, device=CPU)
    assert again.info["denoiser_trained"] is False and np.array_equal(out.images, out2.images)


def test_le_guidance_keeps_content_and_drops_the_perturbation(data, denoiser_file):
    clean, poisoned, delta, _ = data
    path = str(denoiser_file[0])
    le = LE(LEConfig(**TINY_DENOISER, purify_batch=64), ckpt=path)
    out = le.apply(poisoned, seed=0, device=CPU)
    check_valid(out, poisoned)
    assert rms(out.images, clean.images) < rms(poisoned.images, clean.images)
    assert remaining(clean.images, out.images, delta) < 0.6
    # without guidance the result drifts further from the protected input's content
    unguided = LE(LEConfig(**TINY_DENOISER, purify_batch=64, guide_scale=0.0), ckpt=path)
    out_u = unguided.apply(poisoned, seed=0, device=CPU)
    assert rms(out.images, poisoned.images) < rms(out_u.images, poisoned.images)


def test_clean_split_excludes_the_protected_images():
    from unlearnable.data import load_dataset

    try:
        fm = load_dataset("fashion-mnist").train
    except UnlearnableError:
        pytest.skip("embedded Fashion-MNIST not installed")
    protected = fm.take(np.arange(0, 600, 3))
    clean = resolve_clean("ava", protected, None, 300, seed=0)
    assert len(clean) == 300 and clean.images.shape[1:] == protected.images.shape[1:]
    assert not set(clean.indices.tolist()) & set(protected.indices.tolist())


@pytest.mark.parametrize("spec, message", [
    ("dvae:epochs=0", "epochs must be positive"),
    ("dvae:foo=1", "unknown option 'foo'"),
    ("dvae:epochs=ten", "not a valid int"),
    ("dvae:preset=huge", "unknown preset"),
    ("dvae:5", "expected key=value"),
    ("ava:t_star=1.5", "t_star must be in"),
    ("ava:steps=3+steps=4", "given twice"),
    ("ava:ckpt=a.safetensors+cache=b.safetensors", "not both"),
    ("le:guide_scale=-1", "guide_scale must be >= 0"),
    ("le:cycles=0", "cycles must be positive"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(UnlearnableError, match=message) as e:
        parse_defenses(spec)
    assert "\n" not in str(e.value)


def test_bad_data_and_checkpoints_are_one_line_errors(data, tmp_path, denoiser_file):
    poisoned, held_out = data[1], data[3]
    cases = [
        (AVA(), poisoned, "needs clean images"),  # not Fashion-MNIST: no default clean split
        (AVA(clean=ImageDataset(np.zeros((4, 8, 8, 1), np.uint8), np.arange(4), NAMES)), poisoned, "clean images are"),
        (LE(ckpt=str(tmp_path / "missing.safetensors")), poisoned, "not found"),
        (AVA(AVAConfig(t_star=0.5), ckpt=str(denoiser_file[0])), poisoned, "trained up to step 100"),
    ]
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    cases.append((AVA(ckpt=str(bogus)), poisoned, "not a readable safetensors"))
    colour = ImageDataset(np.zeros((4, 16, 16, 3), np.uint8), np.arange(4), NAMES, source="rgb")
    cases.append((LE(clean=held_out, ckpt=str(denoiser_file[0])), colour, "1-channel images"))
    empty = ImageDataset(np.zeros((0, 16, 16, 1), np.uint8), np.zeros(0, np.int64), NAMES, source="empty")
    cases += [(DVAE(TINY_DVAE), empty, "no images"), (LE(clean=held_out), empty, "no images")]
    for defense, train, message in cases:
        with pytest.raises(UnlearnableError, match=message) as e:
            defense.apply(train, seed=0, device=CPU)
        assert "\n" not in str(e.value)
    with pytest.raises(UnlearnableError, match="not a dvae checkpoint"):
        DVAE(TINY_DVAE, cache=str(denoiser_file[0])).apply(poisoned, seed=0, device=CPU)


def test_odd_sizes_and_colour_keep_their_shape():
    rng = np.random.default_rng(3)
    ds = ImageDataset(rng.integers(0, 256, (12, 15, 13, 3), dtype=np.uint8), np.arange(12) % 4, NAMES, source="rgb")
    other = ImageDataset(rng.integers(0, 256, (12, 15, 13, 3), dtype=np.uint8), np.arange(12) % 4, NAMES, source="x")
    small = dict(width=8, epochs=1, batch_size=8, n_clean=12)
    for defense in (DVAE(DVAEConfig(epochs=1, batch_size=8, width=8, latent=4)),
                    AVA(AVAConfig(**small, steps=2), clean=other), LE(LEConfig(**small, cycles=1, steps=2), clean=other)):
        check_valid(defense.apply(ds, seed=1, device=CPU), ds)

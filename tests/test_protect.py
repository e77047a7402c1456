"""``unlearnable protect``: real photos of mixed sizes and modes, budget, resume, safety."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from conftest import make_learnable
from unlearnable.cli import main
from unlearnable.errors import UnlearnableError
from unlearnable.protect import folder as folder_mod
from unlearnable.protect import protect_folder
from unlearnable.protect.engine import Unit, make_config, optimise_unit
from unlearnable.protect.images import UnreadableImage, load_image
from unlearnable.protect.quality import psnr, ssim
from unlearnable.protect.resample import Geometry, apply_perturbation, area_matrix, bilinear_matrix
from unlearnable.protect.scan import UnsafePath, safe_output_path

TINY = dict(epochs=1, steps=2, working_size=16, unit_size=3, reference_per_class=8, device="cpu")
TINY_FLAGS = ["--epochs", "1", "--steps", "2", "--working-size", "16", "--batch-size", "3",
              "--reference-per-class", "8", "--device", "cpu"]


def photos():
    """Real photos: scikit-learn's two samples and, when installed, scikit-image's."""
    from sklearn.datasets import load_sample_images
    china, flower = load_sample_images().images
    out = {"china": china, "flower": flower}
    try:
        from skimage import data
        out.update(camera=data.camera(), coffee=data.coffee(), astronaut=data.astronaut())
    except ImportError:
        out.update(camera=np.asarray(Image.fromarray(flower).convert("L")), coffee=flower[::-1],
                   astronaut=china[:, ::-1])
    return out


def small(a, w, h):
    return Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    x, y = make_learnable(240, size=16, channels=1, classes=4, seed=3)
    path = tmp_path_factory.mktemp("ref") / "ref.npz"
    np.savez(path, x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:],
             class_names=np.array(["a", "b", "c", "d"]))
    return str(path)


def make_folder(root: Path) -> Path:
    """IN_DIR with two class folders, RGB / L / RGBA / EXIF-rotated JPEG, one full-size photo,
    a truncated JPEG, a non-image file and a garbage 'png'."""
    p = photos()
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "nested").mkdir(parents=True)
    Image.fromarray(p["china"]).save(root / "cats" / "china.jpg", quality=90)  # 640x427, full size
    rgba = small(p["flower"], 50, 33).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 50).astype(np.uint8), (33, 1))
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(root / "cats" / "flower.png")
    small(p["camera"], 40, 40).save(root / "dogs" / "camera.png")  # L
    small(p["coffee"], 36, 24).save(root / "dogs" / "nested" / "coffee.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    small(p["astronaut"], 30, 20).save(root / "dogs" / "rotated.jpg", exif=exif, quality=92)
    good = (root / "cats" / "china.jpg").read_bytes()
    (root / "dogs" / "truncated.jpg").write_bytes(good[:600])
    (root / "dogs" / "garbage.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("not an image")
    return root


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(capsys, *argv):
    try:
        code = main(["-q", *argv])
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def protected(tmp_path_factory, reference):
    root = tmp_path_factory.mktemp("protect")
    src = make_folder(root / "in")
    before = snapshot(src)
    r = protect_folder(src, root / "out", reference=reference, **TINY)
    return src, root / "out", r, before


def test_outputs_keep_paths_sizes_modes_and_the_budget(protected):
    src, out, r, before = protected
    assert snapshot(src) == before  # IN_DIR untouched
    expected = {"cats/china.jpg": ("cats/china.png", (640, 427), "RGB"),
                "cats/flower.png": ("cats/flower.png", (50, 33), "RGBA"),
                "dogs/camera.png": ("dogs/camera.png", (40, 40), "L"),
                "dogs/nested/coffee.png": ("dogs/nested/coffee.png", (36, 24), "RGB"),
                "dogs/rotated.jpg": ("dogs/rotated.png", (20, 30), "RGB")}  # EXIF orientation applied
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["input"]: e for e in manifest["images"]}
    assert set(entries) == set(expected) and r.images == 5 and r.protected == 5
    changed = 0
    for rel, (out_rel, size, mode) in expected.items():
        e = entries[rel]
        assert e["output"] == out_rel and tuple(e["size"]) == size and e["out_mode"] == mode
        with Image.open(out / out_rel) as im:
            assert im.format == "PNG" and im.size == size and im.mode == mode
            written = np.asarray(im).astype(np.int16)
        with Image.open(src / rel) as im:
            ref = np.asarray(ImageOps.exif_transpose(im).convert(mode)).astype(np.int16)
        if mode == "RGBA":
            assert np.array_equal(written[..., 3], ref[..., 3])  # alpha copied unchanged
            written, ref = written[..., :3], ref[..., :3]
        diff = np.abs(written - ref)
        assert diff.max() <= 8 and diff.max() == e["linf_255"]  # budget on every pixel, as recorded
        changed += int((diff > 0).sum())
        assert e["sha256"] == hashlib.sha256((src / rel).read_bytes()).hexdigest()
        assert 0.5 < e["ssim"] <= 1 and e["psnr"] > 25
    assert changed > 1000  # the perturbation is real
    assert r.linf_255 == max(e["linf_255"] for e in entries.values()) and r.linf_255 > 0
    assert r.mean_ssim == pytest.approx(np.mean([e["ssim"] for e in entries.values()]), abs=1e-5)
    skipped = {s.rel for s in r.skipped}
    assert skipped == {"dogs/truncated.jpg", "dogs/garbage.png"} and r.ignored == 1
    assert not list(out.rglob("*.tmp"))


def test_cli_exit_codes_and_resume_skips_finished(protected, reference, capsys):
    src, out, _, _ = protected
    mtimes = snapshot(out)
    args = ["protect", str(src), str(out), "--reference", reference, *TINY_FLAGS]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 1  # corrupt inputs skipped -> non-zero unless --skip-bad
    assert "dogs/truncated.jpg" in err and "2 file(s) skipped" in err
    assert "protected 0 image(s), 5 already done, 2 skipped" in stdout
    code, stdout, _ = run_cli(capsys, *args, "--skip-bad")
    assert code == 0
    now = snapshot(out)
    assert {k: v for k, v in now.items() if k.endswith(".png")} == {k: v for k, v in mtimes.items()
                                                                     if k.endswith(".png")}


def test_interrupted_run_resumes_to_identical_bytes(tmp_path, reference, monkeypatch):
    p = photos()
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(["china", "flower", "coffee", "astronaut", "camera"]):
        small(p[name], 24 + 3 * i, 20 + 2 * i).save(src / f"{i}_{name}.png")
    protect_folder(src, tmp_path / "a", reference=reference, single_class=True, **{**TINY, "unit_size": 2})

    calls = {"n": 0}
    real = folder_mod.save_image

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # second image of the second unit
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(folder_mod, "save_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        protect_folder(src, tmp_path / "b", reference=reference, single_class=True, **{**TINY, "unit_size": 2})
    monkeypatch.setattr(folder_mod, "save_image", real)
    done = {e["input"] for e in json.loads((tmp_path / "b" / "manifest.json").read_text())["images"]}
    assert len(done) == 3 and not list((tmp_path / "b").rglob("*.tmp"))
    first = snapshot(tmp_path / "b")
    r = protect_folder(src, tmp_path / "b", reference=reference, single_class=True, **{**TINY, "unit_size": 2})
    assert (r.protected, r.already_done) == (2, 3)
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    pngs = sorted(k for k in a if k.endswith(".png"))
    assert len(pngs) == 5 and pngs == sorted(k for k in b if k.endswith(".png"))
    assert all(a[k][0] == b[k][0] for k in pngs)  # identical bytes
    assert all(b[k] == first[k] for k in first if k.endswith(".png"))  # finished ones not rewritten


def test_safe_output_path_rejects_escapes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for bad in ["../x.png", "a/../../x.png", "/etc/x.png", "a/./b.png", "a\nb.png", "a\\..\\x.png"]:
        with pytest.raises(UnsafePath):
            safe_output_path(out, bad)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "link")
    with pytest.raises(UnsafePath, match="symbolic link"):
        safe_output_path(out, "link/x.png")
    assert safe_output_path(out, "a/b.png") == out / "a" / "b.png"


def test_symlinks_and_odd_names_cannot_escape(tmp_path, reference):
    p = photos()
    src, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    (src / "dogs").mkdir(parents=True)
    outside.mkdir()
    small(p["china"], 20, 16).save(src / "ok.png")
    small(p["flower"], 20, 16).save(src / "dogs" / "d.png")
    small(p["coffee"], 20, 16).save(outside / "secret.png")
    os.symlink(outside / "secret.png", src / "leak.png")  # points outside IN_DIR
    os.symlink(outside, src / "linked_dir")  # folder symlink: not followed
    small(p["coffee"], 20, 16).save(src / "odd\nname.png")
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "unlearnable-protect/1", "images": []}))
    os.symlink(outside, out / "dogs")  # a planted link in OUT_DIR
    before = snapshot(outside)
    r = protect_folder(src, out, reference=reference, single_class=True, **TINY)
    reasons = {s.rel: s.reason for s in r.skipped}
    assert "outside IN_DIR" in reasons["leak.png"]
    assert "not followed" in reasons["linked_dir"]
    assert "symbolic link" in reasons["dogs/d.png"]
    assert any("odd" in v for v in reasons.values())
    assert r.protected == 1 and (out / "ok.png").is_file()
    assert snapshot(outside) == before  # nothing written through the links


def test_folder_rules(tmp_path, reference):
    src = tmp_path / "in"
    src.mkdir()
    small(photos()["china"], 20, 16).save(src / "a.jpg")
    small(photos()["flower"], 20, 16).save(src / "a.png")  # same stem: both keep their full name
    with pytest.raises(UnlearnableError, match="contains it"):
        protect_folder(src, tmp_path, reference=reference, **TINY)
    with pytest.raises(UnlearnableError, match="contains it"):
        protect_folder(src, src, reference=reference, **TINY)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    with pytest.raises(UnlearnableError, match="not empty"):
        protect_folder(src, tmp_path / "full", reference=reference, **TINY)
    with pytest.raises(UnlearnableError, match="lossy"):
        protect_folder(src, tmp_path / "o", reference=reference, fmt="jpeg", **TINY)
    inner = src / "protected"  # OUT_DIR inside IN_DIR: allowed, and never scanned as input
    r1 = protect_folder(src, inner, reference=reference, single_class=True, **TINY)
    r2 = protect_folder(src, inner, reference=reference, single_class=True, **TINY)
    assert sorted(p.name for p in inner.glob("*.png")) == ["a.jpg.png", "a.png.png"]
    assert (r1.protected, r2.protected, r2.already_done) == (2, 0, 2)


def test_lossy_output_only_when_forced(tmp_path, reference, capsys):
    src = tmp_path / "in"
    src.mkdir()
    small(photos()["china"], 24, 18).save(src / "x.png")
    code, _, err = run_cli(capsys, "protect", str(src), str(tmp_path / "o"), "--format", "jpeg",
                           "--reference", reference, *TINY_FLAGS)
    assert code == 2 and err.count("\n") == 1 and "lossy" in err
    code, out, err = run_cli(capsys, "protect", str(src), str(tmp_path / "o"), "--format", "jpeg", "--force-lossy",
                             "--reference", reference, *TINY_FLAGS)
    assert code == 0 and "warning" in err and (tmp_path / "o" / "x.jpg").is_file()


def test_mode_policy(tmp_path):
    rgb = np.asarray(small(photos()["flower"], 12, 10))
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "pt.png", transparency=0)
    Image.fromarray(rgb).convert("LA").save(tmp_path / "la.png")
    Image.fromarray((np.arange(120).reshape(10, 12) * 500).astype(np.uint16)).save(tmp_path / "i16.png")
    Image.fromarray(rgb).convert("1").save(tmp_path / "bw.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tiff")
    got = {n: load_image(tmp_path / n) for n in ["p.png", "pt.png", "la.png", "i16.png", "bw.png", "cmyk.jpg"]}
    assert {n: (g.out_mode, g.channels, g.alpha is not None) for n, g in got.items()} == {
        "p.png": ("RGB", 3, False), "pt.png": ("RGBA", 3, True), "la.png": ("LA", 1, True),
        "i16.png": ("L", 1, False), "bw.png": ("L", 1, False), "cmyk.jpg": ("RGB", 3, False)}
    v16 = np.arange(120).reshape(10, 12) * 500
    assert np.array_equal(got["i16.png"].pixels[..., 0], np.floor(v16 / 257 + 0.5).astype(np.uint8))
    assert set(np.unique(got["bw.png"].pixels)) <= {0, 255}
    with pytest.raises(UnreadableImage, match="unsupported"):
        load_image(tmp_path / "f.tiff")


def test_resampling_maps():
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    for n in (7, 45, 300):
        m = bilinear_matrix(n, 32)
        want = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False)[0, 0].numpy()
        assert np.allclose(m @ x[0, 0].numpy() @ m.T, want, atol=1e-9)
    a = area_matrix(8, 32)
    assert np.allclose(a.sum(1), 1) and np.allclose(a @ x[0, 0].numpy() @ a.T, F.avg_pool2d(x, 4)[0, 0].numpy())
    assert np.allclose(area_matrix(5, 13).sum(1), 1) and np.allclose(area_matrix(13, 5).sum(1), 1)
    # Budget in whole levels on final pixels, whatever the float perturbation asked for.
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (301, 77, 3), dtype=np.uint8)
    g = Geometry(301, 77, 16)
    out = apply_perturbation(px, rng.uniform(-9, 9, (16, 16, 3)) / 255, g, 4)
    d = out.astype(int) - px
    assert np.abs(d).max() == 4 and out.dtype == np.uint8
    assert np.allclose(g.downsample(px).mean((0, 1)), px.reshape(-1, 3).mean(0))


def test_ssim_and_psnr():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (700, 40, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) is None
    mse = ((a.astype(float) - b) ** 2).mean()
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / mse))
    skm = pytest.importorskip("skimage.metrics")
    lum = lambda t: t.astype(float) @ np.array([0.299, 0.587, 0.114])  # noqa: E731
    want = skm.structural_similarity(lum(a), lum(b), gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255)
    assert ssim(a, b) == pytest.approx(want, abs=1e-12)  # strips of 512 rows + halo = whole image


def test_engine_moves_only_user_images_within_budget():
    rng = np.random.default_rng(0)
    x, y = make_learnable(40, size=16, channels=3, classes=4, seed=0)
    u = 6
    geo = Geometry(40, 50, 16)
    unit = Unit(x=x[:u], labels=np.zeros(u, np.int64), grey=np.array([True, False] * 3),
                seen_h=np.stack([geo.seen[0]] * u), seen_w=np.stack([geo.seen[1]] * u))
    cfg = make_config("low", epochs=2, steps=2, working_size=16, device="cpu")
    d = optimise_unit(unit, x[u:], y[u:] + 1, 5, cfg, seed=int(rng.integers(1 << 30)))
    assert d.shape == (u, 16, 16, 3) and np.abs(d).max() <= cfg.eps + 1e-7 and np.abs(d).max() > 0
    assert np.allclose(d[0::2, ..., 0], d[0::2, ..., 1]) and not np.allclose(d[1::2, ..., 0], d[1::2, ..., 1])
    again = optimise_unit(unit, x[u:], y[u:] + 1, 5, cfg, seed=7)
    assert np.array_equal(again, optimise_unit(unit, x[u:], y[u:] + 1, 5, cfg, seed=7))  # seeded


def test_progress_callback_counts_this_runs_images(tmp_path, reference):
    p = photos()
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(["china", "flower", "coffee"]):
        small(p[name], 20 + i, 18).save(src / f"{name}.png")
    calls = []
    protect_folder(src, tmp_path / "o", reference=reference, single_class=True,
                   on_progress=lambda d, t: calls.append((d, t)), **{**TINY, "unit_size": 2})
    assert calls[0] == (0.0, 3) and calls[-1] == (3, 3) and all(t == 3 for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(set(done)) > 3  # fractional steps while a unit is optimised
    (src / "china.png").unlink()
    small(p["china"], 30, 18).save(src / "new.png")
    calls.clear()
    protect_folder(src, tmp_path / "o", reference=reference, single_class=True,
                   on_progress=lambda d, t: calls.append((d, t)), **{**TINY, "unit_size": 2})
    assert calls[0] == (0.0, 1) and calls[-1] == (1, 1)  # only what this run protects is counted


def test_not_given_keeps_the_preset_and_none_is_a_value():
    """NOT_GIVEN (the default of every override) keeps the strength's value; None is a
    value, refused with its name where a setting cannot be None; the same rule for attacks."""
    from unlearnable.attacks import get_attack
    from unlearnable.options import NOT_GIVEN, given

    assert make_config("high", eps=NOT_GIVEN, steps=NOT_GIVEN).eps == 12 / 255
    assert make_config("high", eps=4 / 255).eps == 4 / 255
    with pytest.raises(UnlearnableError, match="eps cannot be None"):
        make_config("mid", eps=None)
    assert given({"a": NOT_GIVEN, "b": None, "c": 0}) == {"b": None, "c": 0}
    assert not NOT_GIVEN and repr(NOT_GIVEN) == "NOT_GIVEN"
    em = get_attack("em")
    assert em.from_preset("cpu", stop_acc=0.5).config.stop_acc == 0.5
    assert em.from_preset("cpu", stop_acc=None, epochs=NOT_GIVEN).config.epochs == em.presets["cpu"].epochs

import json

import numpy as np
import pytest
import torch

from conftest import make_learnable
from unlearnable.data import quantize, read_poisoned, write_poisoned
from unlearnable.data.dataset import ImageDataset
from unlearnable.data.poisoned import budget_levels
from unlearnable.errors import UnlearnableError


def dataset(n=24, channels=1):
    x, y = make_learnable(n, size=8, channels=channels)
    return ImageDataset(x, y, ["a", "b", "c", "d/e"], source="test")


def test_quantize_rounds_not_truncates():
    clean = np.full((1, 1, 2, 1), 100, dtype=np.uint8)
    delta = np.array([0.7, -0.7]).reshape(1, 1, 2, 1) / 255.0  # +0.7 and -0.7 levels
    out = quantize(clean, delta, 8 / 255)
    assert out[0, 0, :, 0].tolist() == [101, 99]  # truncation would give 100, 99


def test_quantize_holds_non_integer_budget_and_pixel_range():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    eps = 4.6 / 255
    delta = rng.uniform(-eps, eps, clean.shape)
    out = quantize(clean, delta, eps).astype(int)
    diff = out - clean
    assert np.abs(diff).max() <= budget_levels(eps) == 4
    assert out.min() >= 0 and out.max() <= 255


def test_quantize_accepts_nchw_tensor():
    ds = dataset(channels=3)
    delta = torch.full((len(ds), 3, 8, 8), 2 / 255)
    out = quantize(ds.images, delta, 8 / 255)
    expected = np.clip(ds.images.astype(int) + 2, 0, 255)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_exact(tmp_path, channels):
    ds = dataset(channels=channels)
    rng = np.random.default_rng(1)
    poisoned = quantize(ds.images, rng.uniform(-8 / 255, 8 / 255, ds.images.shape), 8 / 255)
    test = dataset(8, channels)
    m = write_poisoned(tmp_path / "out", ds, poisoned, eps=8 / 255, method="unit", test=test)
    assert m["linf_255"] == int(np.abs(poisoned.astype(int) - ds.images).max()) <= 8
    assert m["eps_255"] == pytest.approx(8)
    back = read_poisoned(tmp_path / "out")
    np.testing.assert_array_equal(back.poisoned.images, poisoned)
    np.testing.assert_array_equal(back.clean.images, ds.images)
    np.testing.assert_array_equal(back.poisoned.labels, ds.labels)
    np.testing.assert_array_equal(back.test.images, test.images)
    assert back.clean.class_names == ds.class_names
    pngs = sorted((tmp_path / "out" / "train").rglob("*.png"))
    assert len(pngs) == len(ds)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["method"] == "unit" and manifest["counts"]["train"] == len(ds)


def test_writer_refuses_violation_and_leaves_nothing(tmp_path):
    ds = dataset()
    poisoned = ds.images.astype(int)
    poisoned[0, 0, 0, 0] = min(255, poisoned[0, 0, 0, 0] + 9) if poisoned[0, 0, 0, 0] < 246 else poisoned[0, 0, 0, 0] - 9
    with pytest.raises(UnlearnableError, match="budget"):
        write_poisoned(tmp_path / "out", ds, poisoned.astype(np.uint8), eps=8 / 255, method="unit")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_non_empty_dir(tmp_path):
    ds = dataset()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(UnlearnableError, match="not empty"):
        write_poisoned(tmp_path / "out", ds, ds.images.copy(), eps=8 / 255, method="unit")
    with pytest.raises(UnlearnableError, match="not written by unlearnable"):  # not ours: never replaced
        write_poisoned(tmp_path / "out", ds, ds.images.copy(), eps=8 / 255, method="unit", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"
    write_poisoned(tmp_path / "mine", ds, ds.images.copy(), eps=8 / 255, method="unit")
    with pytest.raises(UnlearnableError, match="already holds a protected dataset"):
        write_poisoned(tmp_path / "mine", ds, ds.images.copy(), eps=8 / 255, method="unit")
    write_poisoned(tmp_path / "mine", ds, ds.images.copy(), eps=8 / 255, method="again", overwrite=True)
    assert json.loads((tmp_path / "mine" / "manifest.json").read_text())["method"] == "again"


def test_reader_detects_tampering(tmp_path):
    ds = dataset()
    poisoned = quantize(ds.images, np.full(ds.images.shape, 3 / 255), 8 / 255)
    write_poisoned(tmp_path / "out", ds, poisoned, eps=8 / 255, method="unit")
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    m["linf_255"] = 1
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UnlearnableError, match="differs from the manifest"):
        read_poisoned(tmp_path / "out")

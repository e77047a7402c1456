"""One-class (--classes) and partial (--ratio) protection, and the split accuracy."""

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import make_learnable
from unlearnable.cli import main
from unlearnable.data import read_poisoned, write_poisoned
from unlearnable.data.dataset import DataSplits, ImageDataset
from unlearnable.errors import UnlearnableError
from unlearnable.poison import parse_classes, poison_dataset, ratio_count, select_protected
from unlearnable.train.loops import TensorData
from unlearnable.train.per_class import protection_metrics, split_accuracy

NAMES = ["a", "b", "c", "d"]


def splits(n=120, channels=1, size=8):
    x, y = make_learnable(n + 20, size=size, channels=channels, seed=2)
    return DataSplits(ImageDataset(x[:n], y[:n], NAMES, source="unit"),
                      ImageDataset(x[n:], y[n:], NAMES, source="unit:test"), "unit")


def png_bytes(img):
    buf = io.BytesIO()
    mode = "L" if img.shape[-1] == 1 else "RGB"
    Image.fromarray(img[..., 0] if mode == "L" else img, mode=mode).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# ---- selection --------------------------------------------------------------------------------

def test_ratio_count_rounds_half_up_and_protects_at_least_one():
    assert ratio_count(0.25, 10) == 3  # 2.5 -> 3 (halves up, not to even)
    assert ratio_count(0.15, 10) == 2  # 1.4999999... in floating point still counts as 1.5
    assert ratio_count(0.2, 10) == 2 and ratio_count(0.24, 10) == 2
    assert ratio_count(0.5, 5) == 3 and ratio_count(1.0, 7) == 7
    assert ratio_count(0.001, 10) == 1


@pytest.mark.parametrize("sizes", [[50, 50, 50, 50], [100, 60, 40, 7]])
def test_ratio_selection_is_stratified_nested_and_seeded(sizes):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    np.random.default_rng(0).shuffle(labels)
    n, prev = len(labels), np.zeros(len(labels), bool)
    for r in (0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 0.99, 1.0):
        mask = select_protected(labels, ratio=r, seed=7)
        k = ratio_count(r, n)
        assert mask.sum() == k
        per_class = np.bincount(labels[mask], minlength=len(sizes))
        assert np.all(np.abs(per_class - k * np.array(sizes) / n) < 1)  # within one image of its share
        assert np.all(mask[prev])  # a smaller ratio selects a subset of a larger one
        prev = mask
    assert np.array_equal(select_protected(labels, ratio=0.3, seed=7), select_protected(labels, ratio=0.3, seed=7))
    assert not np.array_equal(select_protected(labels, ratio=0.3, seed=7),
                              select_protected(labels, ratio=0.3, seed=8))


def test_classes_and_ratio_combine_within_the_classes():
    labels = np.arange(200) % 4
    only = select_protected(labels, classes=[1, 3])
    assert np.array_equal(only, np.isin(labels, [1, 3]))
    both = select_protected(labels, classes=[1, 3], ratio=0.3, seed=0)
    assert both.sum() == ratio_count(0.3, 100) == 30
    assert set(labels[both]) == {1, 3} and np.all(only[both])
    assert abs(int((labels[both] == 1).sum()) - int((labels[both] == 3).sum())) <= 1


def test_parse_classes_names_and_indices():
    names = ["T-shirt/top", "Trouser", "Bag"]
    assert parse_classes("0,Bag", names) == [0, 2]
    assert parse_classes(" bag , 2,0 ", names) == [0, 2]  # case-insensitive names, duplicates merged
    assert parse_classes(["Trouser", 0], names) == [0, 1]
    assert parse_classes("2", ["10", "2", "3"]) == [1]  # a class name wins over an index
    for bad, msg in (("zebra", "unknown class"), ("3", "out of range"), ("-1", "out of range"),
                     ("", "comma list"), ("0,,1", "comma list")):
        with pytest.raises(UnlearnableError, match=msg):
            parse_classes(bad, names)


# ---- writing: untouched images are the originals ----------------------------------------------

@pytest.mark.parametrize("mode", [{"classes": "b"}, {"ratio": 0.3}, {"classes": "0,c", "ratio": 0.5}])
def test_untouched_images_are_bit_identical_and_indices_recorded(tmp_path, mode):
    data = splits(channels=3)
    m = poison_dataset("random", data, tmp_path / "out", subset=80, seed=1, **mode)
    train = data.train.stratified_subset(80, 1)  # what poison_dataset protected
    back = read_poisoned(tmp_path / "out")
    sel = m["selection"]
    classes = parse_classes(mode["classes"], NAMES) if "classes" in mode else None
    expected = select_protected(train.labels, classes=classes, ratio=mode.get("ratio"), seed=1)
    changed = np.any(back.delta != 0, axis=(1, 2, 3))
    # the recorded rows are exactly the perturbed ones (random noise changes every selected image)
    assert sel["perturbed_indices"] == np.flatnonzero(changed).tolist() == np.flatnonzero(expected).tolist()
    assert sel["perturbed_source_indices"] == train.indices[expected].tolist()
    assert sel["count"] == m["counts"]["perturbed"] == int(expected.sum())
    assert sel["protected_classes"] == classes and sel["ratio"] == mode.get("ratio") and sel["seed"] == 1
    assert np.array_equal(back.perturbed_mask, expected) and back.protected_classes == classes
    # untouched: zero perturbation, decoded PNG equal to the source image, file equal to its plain encoding
    assert not back.delta[~expected].any()
    np.testing.assert_array_equal(back.poisoned.images[~expected], train.images[~expected])
    files = {int(p.stem): p for p in (tmp_path / "out" / "train").rglob("*.png")}
    for i in np.flatnonzero(~expected):
        assert files[i].read_bytes() == png_bytes(train.images[i])
    assert np.abs(back.poisoned.images[expected].astype(int) - train.images[expected]).max() <= 8
    if classes:
        assert set(train.labels[expected]) <= set(classes)


def test_masking_a_full_run_gives_the_partial_run(tmp_path):
    """What bench/ratio_sweep.py relies on: an attack's perturbation of an image does not
    depend on the selection, so masking the full run reproduces ``--ratio`` exactly."""
    data = splits()
    poison_dataset("random", data, tmp_path / "full", seed=3)
    poison_dataset("random", data, tmp_path / "half", seed=3, ratio=0.5)
    full, half = read_poisoned(tmp_path / "full"), read_poisoned(tmp_path / "half")
    mask = half.perturbed_mask
    derived = np.where(mask[:, None, None, None], full.poisoned.images, full.clean.images)
    np.testing.assert_array_equal(derived, half.poisoned.images)
    assert full.perturbed_mask.all() and full.protected_classes is None and "selection" not in full.manifest


def test_writer_refuses_changes_outside_the_selection(tmp_path):
    train = splits().train
    poisoned = train.images.copy()
    poisoned[5] = np.clip(poisoned[5].astype(int) + 1, 0, 255).astype(np.uint8)
    mask = np.zeros(len(train), bool)
    mask[:5] = True
    with pytest.raises(UnlearnableError, match="outside the protected selection"):
        write_poisoned(tmp_path / "out", train, poisoned, eps=8 / 255, method="unit", protected=mask)
    mask[5] = True  # row 5 has label 1
    with pytest.raises(UnlearnableError, match="outside protected_classes"):
        write_poisoned(tmp_path / "out", train, poisoned, eps=8 / 255, method="unit", protected=mask,
                       selection={"protected_classes": [0]})
    with pytest.raises(UnlearnableError, match="boolean mask"):
        write_poisoned(tmp_path / "out", train, poisoned, eps=8 / 255, method="unit", protected=mask[:-1])
    assert list(tmp_path.iterdir()) == []


def test_reader_detects_a_perturbed_image_missing_from_the_manifest(tmp_path):
    poison_dataset("random", splits(), tmp_path / "out", seed=0, classes="a")
    path = tmp_path / "out" / "manifest.json"
    m = json.loads(path.read_text())
    m["selection"]["perturbed_indices"] = m["selection"]["perturbed_indices"][1:]
    path.write_text(json.dumps(m))
    with pytest.raises(UnlearnableError, match="not in the manifest's perturbed_indices"):
        read_poisoned(tmp_path / "out")


# ---- CLI --------------------------------------------------------------------------------------

FAST = ["--epochs", "1", "--steps", "1", "--batch-size", "64", "--device", "cpu"]


def cli(capsys, *argv):
    try:
        code = main(["-q", *argv])
    except SystemExit as e:  # argparse errors exit directly
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flags, needle", [
    (["--classes", "zebra"], "unknown class 'zebra'"), (["--classes", "4"], "out of range"),
    (["--classes", ","], "comma list"), (["--ratio", "0"], "--ratio"), (["--ratio", "1.5"], "--ratio"),
    (["--ratio", "half"], "--ratio")])
def test_cli_bad_selection_is_one_line_and_leaves_nothing(capsys, tmp_path, tiny_npz, flags, needle):
    out = tmp_path / "out"
    code, _, err = cli(capsys, "poison", "--method", "mi-ue", "--data", str(tiny_npz), "--out", str(out),
                       *FAST, *flags)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("unlearnable: error: ") and needle in lines[0]
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_cli_one_class_mi_ue(capsys, tmp_path, tiny_npz):
    code, stdout, _ = cli(capsys, "poison", "--method", "mi-ue", "--data", str(tiny_npz),
                          "--out", str(tmp_path / "out"), *FAST, "--classes", "c")
    assert code == 0
    line = json.loads(stdout.strip().splitlines()[-1])
    assert line["protected_classes"] == ["c"] and line["protected"] == 40 and line["ratio"] is None
    back = read_poisoned(tmp_path / "out")
    assert back.protected_classes == [2]
    np.testing.assert_array_equal(back.perturbed_mask, back.clean.labels == 2)
    assert not back.delta[back.clean.labels != 2].any() and back.delta[back.clean.labels == 2].any()
    x = np.load(tiny_npz)
    np.testing.assert_array_equal(back.poisoned.images[back.clean.labels != 2],
                                  x["x_train"][x["y_train"] != 2])


# ---- split accuracy ---------------------------------------------------------------------------

class FirstPixel(torch.nn.Module):
    """Predicts the class written in the first pixel (value = class index / 255)."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes
        self.zero = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return F.one_hot((x[:, 0, 0, 0] * 255).round().long(), self.classes).float() + self.zero


def hand_made_test():
    labels = np.array([1, 1, 1, 1, 0, 0, 2, 2, 3, 3])
    preds = np.array([1, 1, 1, 0, 0, 1, 2, 0, 0, 3])
    x = np.zeros((10, 4, 4, 1), np.uint8)
    x[:, 0, 0, 0] = preds
    return ImageDataset(x, labels, NAMES)


def test_split_accuracy_known_numbers():
    model, test = FirstPixel(4), hand_made_test()
    assert split_accuracy(model, test, [1], batch_size=3) == {"protected": 0.75, "other": 0.5,
                                                              "n_protected": 4, "n_other": 6}
    acc = split_accuracy(model, TensorData.from_dataset(test, "cpu"), np.array([1, 3]))
    assert acc["protected"] == pytest.approx(4 / 6) and acc["other"] == 0.5
    assert split_accuracy(model, test, [0, 1, 2, 3])["other"] is None


def test_protection_metrics_sources(tmp_path):
    model, test = FirstPixel(4), hand_made_test()
    want = {"test_acc_protected_classes": 0.75, "test_acc_other_classes": 0.5}
    assert protection_metrics(model, test, {"selection": {"protected_classes": [1]}}) == want
    assert protection_metrics(model, test, {"selection": {"protected_classes": None, "ratio": 0.5}}) == {}
    assert protection_metrics(model, test, {"method": "mi-ue"}) == {}
    assert protection_metrics(model, test, "fashion-mnist") == {}
    data = splits()
    poison_dataset("random", data, tmp_path / "p", seed=0, classes="b")
    assert protection_metrics(model, test, str(tmp_path / "p")) == want
    assert protection_metrics(model, test, read_poisoned(tmp_path / "p"), batch_size=4) == want

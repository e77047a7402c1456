"""Data loaders on bad input: one UnlearnableError line naming the file, never a traceback.

Issue 15: NaN / float / sparse / negative labels and empty training splits in .npz files,
stray CIFAR batch files, decompression bombs, 16-bit grey PNGs, and broken protected
datasets (manifest keys and types, truncated / object-array / mis-shaped perturbation.npz).
"""

import json
import pickle
import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from unlearnable.cli import main
from unlearnable.data import load_cifar, load_dataset, load_image_folder, load_npz_dataset, read_poisoned
from unlearnable.data import write_poisoned
from unlearnable.data.dataset import ImageDataset
from unlearnable.data.imagefolder import read_image, to_uint8_array
from unlearnable.data.npz import MAX_SPARSE_CLASSES
from unlearnable.data.poisoned import read_manifest
from unlearnable.errors import UnlearnableError
from unlearnable.protect.images import UnreadableImage, identify, load_image
from unlearnable.protect.reference import load_reference


def one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def cli_error(capsys, *argv):
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("unlearnable: error: "), err
    return lines[0]


def train_cli(capsys, data, out):
    return cli_error(capsys, "train", "--data", str(data), "--out", str(out), "--epochs", "1", "--device", "cpu")


def npz(path, y_train, n=None, **extra):
    n = len(y_train) if n is None else n
    np.savez(path, x_train=np.zeros((n, 4, 4), np.uint8), y_train=np.asarray(y_train), **extra)
    return path


# ---- 1. float / NaN labels -------------------------------------------------------------------

def test_npz_nan_and_float_labels_are_refused(tmp_path, capsys):
    bad = npz(tmp_path / "nan.npz", np.array([0.0, np.nan, 1.0]))
    with pytest.raises(UnlearnableError) as e:
        load_npz_dataset(bad)
    one_line(e, "nan.npz", "y_train", "NaN")
    with pytest.raises(UnlearnableError) as e:  # integer-valued floats: refused too, and the message says so
        load_npz_dataset(npz(tmp_path / "f.npz", np.array([0.0, 1.0, 1.0])))
    one_line(e, "f.npz", "integer dtype", "1.0")
    with pytest.raises(UnlearnableError) as e:
        load_npz_dataset(npz(tmp_path / "half.npz", np.array([0.0, 0.5, 1.0])))
    one_line(e, "half.npz", "non-integer")
    np.savez(tmp_path / "t.npz", x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.array([0, 1]),
             x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([np.inf, 0.0]))
    with pytest.raises(UnlearnableError) as e:
        load_npz_dataset(tmp_path / "t.npz")
    one_line(e, "t.npz", "y_test")
    assert "nan.npz" in train_cli(capsys, bad, tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ---- 2. no training images -------------------------------------------------------------------

def test_npz_without_training_images(tmp_path, capsys):
    bad = tmp_path / "empty.npz"
    np.savez(bad, x_train=np.zeros((0, 28, 28), np.uint8), y_train=np.zeros(0, np.int64))
    with pytest.raises(UnlearnableError) as e:
        load_npz_dataset(bad)
    one_line(e, "empty.npz", "no training images")
    assert "no training images" in train_cli(capsys, bad, tmp_path / "o")


# ---- 3. labels far above the number of classes -----------------------------------------------

def test_npz_sparse_and_negative_labels(tmp_path):
    with pytest.raises(UnlearnableError) as e:  # one stray label must not create 20001 classes
        load_npz_dataset(npz(tmp_path / "big.npz", [0, 1, 20000]))
    one_line(e, "big.npz", "20000", "class_names", str(MAX_SPARSE_CLASSES))
    with pytest.raises(UnlearnableError) as e:
        load_npz_dataset(npz(tmp_path / "neg.npz", [0, 1, -1]))
    one_line(e, "neg.npz", "negative label -1")
    with pytest.raises(UnlearnableError) as e:  # with class_names: 0..len-1
        load_npz_dataset(npz(tmp_path / "named.npz", [0, 1, 2], class_names=np.array(["a", "b"])))
    one_line(e, "named.npz", "labels out of range", "0..1")
    # accepted: a few missing classes below the cap, and dense labels above it
    assert load_npz_dataset(npz(tmp_path / "gaps.npz", [0, 2, 5])).train.num_classes == 6
    dense = np.arange(MAX_SPARSE_CLASSES + 1)
    assert load_npz_dataset(npz(tmp_path / "dense.npz", dense)).train.num_classes == MAX_SPARSE_CLASSES + 1
    names = np.array([f"c{i}" for i in range(20001)])
    assert load_npz_dataset(npz(tmp_path / "ok.npz", [0, 1, 20000], class_names=names)).train.num_classes == 20001


def test_npz_bare_npy_and_truncated(tmp_path):
    with open(tmp_path / "a.npz", "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(UnlearnableError) as e:
        load_npz_dataset(tmp_path / "a.npz")
    one_line(e, "a.npz", ".npy")
    good = npz(tmp_path / "g.npz", [0, 1]).read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(UnlearnableError) as e:
        load_npz_dataset(tmp_path / "cut.npz")
    one_line(e, "cut.npz")


# ---- 4. stray CIFAR batch files --------------------------------------------------------------

def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"x", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f"] * n}


def test_cifar_stray_batch_files_are_ignored_and_corrupt_ones_named(tmp_path, capsys):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_batch(3, i), protocol=2))
    (root / "test_batch").write_bytes(pickle.dumps(cifar_batch(2, 9), protocol=2))
    (root / "data_batch_x").write_bytes(b"junk")
    (root / "data_batch_6").write_bytes(b"junk")
    (root / "data_batch_1.bak").write_bytes(b"junk")
    (root / "data_batch_7").mkdir()
    s = load_dataset(root)
    assert len(s.train) == 15 and len(s.test) == 2
    np.testing.assert_array_equal(s.train.labels[:3], cifar_batch(3, 1)[b"labels"])
    raw = (root / "data_batch_3").read_bytes()
    for broken in (raw[: len(raw) // 2], b"junk", raw.replace(b"latin1", b"utf_16")):
        (root / "data_batch_3").write_bytes(broken)
        with pytest.raises(UnlearnableError) as e:
            load_cifar(root)
        one_line(e, "data_batch_3")
    assert "data_batch_3" in train_cli(capsys, root, tmp_path / "o")
    b = cifar_batch(3, 3)
    b[b"labels"][0] = 10
    (root / "data_batch_3").write_bytes(pickle.dumps(b, protocol=2))
    with pytest.raises(UnlearnableError) as e:
        load_cifar(root)
    one_line(e, "data_batch_3", "out of range")


# ---- 5. decompression bombs ------------------------------------------------------------------

def png_header_only(path, width, height):
    """A PNG that declares ``width`` x ``height`` (1-bit grey) with almost no data: cheap to write."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def image_tree(root, size=8, mode="L"):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.new(mode, (size, size), 40 * i).save(root / c / f"{i}.png")
    return root


def test_decompression_bomb_is_one_line_everywhere(tmp_path, capsys, monkeypatch):
    tree = image_tree(tmp_path / "tree")
    bomb = png_header_only(tree / "a" / "bomb.png", 20000, 20000)
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape either
        with pytest.raises(UnlearnableError) as e:
            read_image(bomb)
        one_line(e, "bomb.png", f"image too large (400000000 pixels, limit {limit})")
        with pytest.raises(UnlearnableError) as e:
            load_image_folder(tree)
        one_line(e, "bomb.png", "image too large")
        with pytest.raises(UnlearnableError) as e:  # protect --reference
            load_reference(str(tree), size=8, per_class=1, seed=0)
        one_line(e, "bomb.png", "image too large")
        with pytest.raises(UnreadableImage, match=r"image too large \(400000000 pixels"):  # protect's own reader
            load_image(bomb)
        assert identify(bomb)
    # between 1x and 2x the limit Pillow only warns: refused all the same
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UnlearnableError) as e:
            read_image(tree / "b" / "0.png")
        one_line(e, "0.png", "image too large (64 pixels, limit 40)")
        with pytest.raises(UnreadableImage, match=r"image too large \(64 pixels, limit 40\)"):
            load_image(tree / "b" / "0.png")
    monkeypatch.undo()
    assert "image too large" in train_cli(capsys, tree, tmp_path / "o")


# ---- 6. 16-bit grey ----------------------------------------------------------------------------

def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1, 128, 129], [257, 385, 386, 1000], [32767, 32896, 40000, 65278],
                       [65279, 65534, 65535, 514]], dtype=np.uint16)
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert expected[1, 0] == 1 and expected[3, 2] == 255
    tree = tmp_path / "tree"
    for c in ("a", "b"):
        (tree / c).mkdir(parents=True)
        im = Image.fromarray(values)
        assert im.mode.startswith("I;16")
        im.save(tree / c / "0.png")
    with Image.open(tree / "a" / "0.png") as im:
        assert im.mode in ("I", "I;16")  # what Pillow reads a 16-bit PNG as
    s = load_image_folder(tree)
    assert s.train.channels == 1
    np.testing.assert_array_equal(s.train.images[0, ..., 0], expected)
    np.testing.assert_array_equal(load_image(tree / "a" / "0.png").pixels[..., 0], expected)  # protect
    ref = load_reference(str(tree), size=4, per_class=1, seed=0)  # protect --reference
    np.testing.assert_array_equal(ref.train.images[0, ..., 0], expected)
    # mode I (32-bit) holding 16-bit values, and a colour tree: the same levels, replicated
    np.testing.assert_array_equal(to_uint8_array(Image.fromarray(values.astype(np.int32)), "L"), expected)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(tree / "b" / "1.png")
    s = load_image_folder(tree)
    assert s.train.channels == 3
    np.testing.assert_array_equal(s.train.images[0], np.repeat(expected[..., None], 3, axis=-1))
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tree / "b" / "2.tif")
    with pytest.raises(UnlearnableError) as e:
        load_image_folder(tree)
    one_line(e, "2.tif", "0..65535")


# ---- 7. the protected-dataset format, read side ----------------------------------------------

CANARY = []


def _canary():
    CANARY.append("unpickled")
    return 0


class Canary:
    def __reduce__(self):
        return (_canary, ())


@pytest.fixture
def protected(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(10, 240, (12, 6, 6, 1), dtype=np.uint8)
    ds = ImageDataset(x, np.arange(12) % 3, ["a", "b", "c"], source="unit")
    test = ImageDataset(x[:4], np.arange(4) % 3, ["a", "b", "c"], source="unit")
    poisoned = np.clip(x.astype(int) + rng.integers(-2, 3, x.shape), 0, 255).astype(np.uint8)
    write_poisoned(tmp_path / "good", ds, poisoned, eps=8 / 255, method="unit", test=test)
    assert len(read_poisoned(tmp_path / "good").poisoned) == 12
    return tmp_path / "good"


def variant(protected, name, *, manifest=None, pert=None, test=None):
    d = protected.with_name(name)
    shutil.copytree(protected, d)
    if manifest is not None:
        m = json.loads((d / "manifest.json").read_text())
        out = manifest(m)
        (d / "manifest.json").write_text(out if isinstance(out, str) else json.dumps(m if out is None else out))
    if pert is not None:
        pert(d / "perturbation.npz")
    if test is not None:
        test(d / "test.npz")
    return d


def _without(key):
    return lambda m: m.pop(key) and None


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


MANIFEST_CASES = [
    (_without("class_names"), "missing 'class_names'"),
    (_set("class_names", [1, 2, 3]), "'class_names' must be a non-empty list of strings"),
    (_set("class_names", "abc"), "'class_names' must be a non-empty list of strings"),
    (_without("counts"), "missing 'counts'"),
    (lambda m: m["counts"].pop("train") and None, "'counts' needs a non-negative integer 'train'"),
    (_set("counts", []), "'counts' must be an object"),
    (_set("class_folders", ["000-a", "../../etc", "002-c"]), "'class_folders' must be"),
    (_set("class_folders", ["000-a"]), "'class_folders' must be a list of 3"),
    (_set("image_shape", [6, 6]), "'image_shape'"),
    (_set("linf_255", "2"), "'linf_255'"),
    (_without("eps_255"), "missing 'eps_255'"),
    (_set("format_version", 99), "unsupported format_version 99"),
    (_set("selection", {"perturbed_indices": ["x"]}), "perturbed_indices"),
    (_set("selection", {"perturbed_indices": [0, 50]}), "out of range"),
    (_set("norm", "l0"), "l0_pixels"),
    (lambda m: [1, 2, 3], "must hold a JSON object"),
    (lambda m: "{not json", "not readable JSON"),
    (lambda m: "\udcff", "not readable JSON"),
]


@pytest.mark.parametrize("case", range(len(MANIFEST_CASES)))
def test_poisoned_manifest_keys_and_types(protected, case):
    edit, needle = MANIFEST_CASES[case]
    if case == len(MANIFEST_CASES) - 1:  # bytes that are not UTF-8
        d = variant(protected, f"m{case}")
        (d / "manifest.json").write_bytes(b"\xff\xfe{")
    else:
        d = variant(protected, f"m{case}", manifest=edit)
    for reader in (read_manifest, read_poisoned, load_dataset):
        with pytest.raises(UnlearnableError) as e:
            reader(d)
        one_line(e, str(d / "manifest.json"), needle)


def _truncate(p):
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])


def _resave(**change):
    def edit(p):
        with np.load(p) as z:
            arrays = {k: z[k] for k in z.files}
        arrays.update(change)
        for k, v in list(arrays.items()):
            if v is None:
                del arrays[k]
        np.savez(p, **arrays)
    return edit


def _object_array(p):
    np.savez(p, delta=np.array([{"a": 1}, Canary()], dtype=object), labels=np.zeros(12, np.int64))


PERT_CASES = [
    (_truncate, "cannot read"),
    (_object_array, "without pickle"),
    (lambda p: p.write_bytes(b"not a zip"), "cannot read"),
    (_resave(delta=np.zeros((12, 6, 6, 1), np.float32)), "'delta' must be int16"),
    (_resave(delta=np.zeros((12, 6, 6, 3), np.int16)), "'delta' must be int16 of shape (12, 6, 6, 1)"),
    (_resave(delta=np.zeros((11, 6, 6, 1), np.int16)), "found int16 (11, 6, 6, 1)"),
    (_resave(delta=None), "missing array 'delta'"),
    (_resave(labels=np.zeros(12, np.float64)), "'labels' must be 12 integer labels"),
    (_resave(labels=np.full(12, 7)), "'labels' out of range 0..2"),
    (_resave(source_indices=np.full(12, -1)), "'source_indices'"),
]


@pytest.mark.parametrize("case", range(len(PERT_CASES)))
def test_poisoned_perturbation_npz(protected, case):
    edit, needle = PERT_CASES[case]
    d = variant(protected, f"p{case}", pert=edit)
    with pytest.raises(UnlearnableError) as e:
        read_poisoned(d)
    one_line(e, str(d / "perturbation.npz"), needle)
    assert not CANARY  # nothing was unpickled


def test_poisoned_test_npz_and_cli(protected, capsys, tmp_path):
    for name, edit, needle in (("t0", _truncate, "cannot read"),
                               ("t1", _resave(x_test=np.zeros((4, 5, 5, 1), np.uint8)), "'x_test' must be uint8"),
                               ("t2", _resave(y_test=None), "missing array 'y_test'"),
                               ("t3", _resave(y_test=np.array([0.0, 1, 2, np.nan])), "'y_test' must be 4 integer")):
        d = variant(protected, name, test=edit)
        with pytest.raises(UnlearnableError) as e:
            read_poisoned(d)
        one_line(e, str(d / "test.npz"), needle)
    d = variant(protected, "nocls", manifest=_without("class_names"))
    assert "missing 'class_names'" in train_cli(capsys, d, tmp_path / "o")
    d = variant(protected, "obj", pert=_object_array)
    assert "perturbation.npz" in train_cli(capsys, d, tmp_path / "o")
    assert not (tmp_path / "o").exists() and not CANARY

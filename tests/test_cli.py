"""Bad input: one line on stderr, exit 2, no partial output."""

import gzip
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import make_learnable
from unlearnable.cli import main

FAST = ["--epochs", "1", "--steps", "1", "--batch-size", "64", "--device", "cpu"]


def run(capsys, *argv):
    try:
        code = main(["-q", *argv])
    except SystemExit as e:  # a flag refused by the parser
        code = e.code
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("unlearnable: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def poison(capsys, data, out, *extra):
    return run(capsys, "poison", "--method", "mi-ue", "--data", str(data), "--out", str(out), *FAST, *extra)


def test_missing_data_path(capsys, tmp_path):
    code, err = poison(capsys, tmp_path / "nope", tmp_path / "out")
    assert_one_line_error(code, err, "data path not found", "nope")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_corrupt_image(capsys, tmp_path):
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), i * 40).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "data" / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, err = poison(capsys, tmp_path / "data", tmp_path / "out")
    assert_one_line_error(code, err, "cannot read image", "1.png")
    assert not (tmp_path / "out").exists()


def test_mismatched_image_sizes(capsys, tmp_path):
    for c, size in (("a", 8), ("b", 9)):
        (tmp_path / "data" / c).mkdir(parents=True)
        Image.new("RGB", (size, size)).save(tmp_path / "data" / c / "0.png")
    code, err = poison(capsys, tmp_path / "data", tmp_path / "out")
    assert_one_line_error(code, err, "mismatched image sizes")


def test_idx_bad_header(capsys, tmp_path, monkeypatch):
    (tmp_path / "fm").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / "fm" / name, "wb") as f:
            f.write(struct.pack(">I", 0x12345678) + b"\0" * 64)
    code, err = poison(capsys, f"fashion-mnist:{tmp_path / 'fm'}", tmp_path / "out")
    assert_one_line_error(code, err, "bad idx header")


def test_cifar_pickle_unexpected_types(capsys, tmp_path):
    d = tmp_path / "cifar"
    d.mkdir()
    (d / "data_batch_1").write_bytes(pickle.dumps({b"data": [1, 2, 3], b"labels": [0]}, protocol=2))
    code, err = poison(capsys, d, tmp_path / "out")
    assert_one_line_error(code, err, "data_batch_1", "uint8 array")


def test_labels_out_of_range(capsys, tmp_path):
    x, y = make_learnable(20)
    y[3] = 9
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, class_names=np.array(list("abcd")))
    code, err = poison(capsys, tmp_path / "d.npz", tmp_path / "out")
    assert_one_line_error(code, err, "labels out of range")


@pytest.mark.parametrize("eps", ["0", "-2", "300"])
def test_eps_out_of_range(capsys, tiny_npz, tmp_path, eps):
    code, err = poison(capsys, tiny_npz, tmp_path / "out", "--eps", eps)
    assert_one_line_error(code, err, "--eps", "must be in (0, 255] (1/255 units)")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_output_not_empty(capsys, tiny_npz, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    code, err = poison(capsys, tiny_npz, tmp_path / "out")
    assert_one_line_error(code, err, "not empty", "not written by unlearnable")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"


def test_unknown_model_and_method(capsys, tiny_npz, tmp_path):
    code, err = poison(capsys, tiny_npz, tmp_path / "out", "--model", "resnet-9000")
    assert_one_line_error(code, err, "unknown model", "resnet-9000")
    code, err = run(capsys, "poison", "--method", "nope", "--data", str(tiny_npz), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "unknown method", "nope")
    code, err = run(capsys, "train", "--data", str(tiny_npz), "--model", "vgg-1000", "--out", str(tmp_path / "t"))
    assert_one_line_error(code, err, "unknown model")
    assert not (tmp_path / "t").exists()


def test_bad_flag_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["poison", "--method", "mi-ue", "--data", "x", "--out", "y", "--epochs", "zero"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an integer" in err[0]


def test_poison_then_train_end_to_end(capsys, tiny_npz, tmp_path):
    code, err = poison(capsys, tiny_npz, tmp_path / "p", "--seed", "1")
    assert code == 0, err
    code = main(["-q", "train", "--data", str(tmp_path / "p"), "--model", "cnn", "--epochs", "1",
                 "--batch-size", "64", "--device", "cpu", "--out", str(tmp_path / "v")])
    assert code == 0
    import json
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert 0 <= m["test_acc"] <= 1 and len(m["history"]) == 1
    from unlearnable.models.checkpoint import load_model
    model, meta = load_model(tmp_path / "v")
    assert meta["model"] == "cnn" and meta["num_classes"] == 4


def test_help_everywhere(capsys):
    for argv in ([], ["demo"], ["poison"], ["train"]):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--help"])
        assert e.value.code == 0
        assert "usage" in capsys.readouterr().out

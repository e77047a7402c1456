"""What the tool withstands: every command against one shared matrix of bad inputs.

Each case runs a command in-process and asserts the contract of the CLI's error boundary:
exit status 2, exactly one line on stderr that starts ``unlearnable: error:`` and names
the problem (a needle), no traceback, and the workspace's file tree unchanged (nothing
created, removed or altered outside or at the intended output). docs/reliability.md lists
what was tried; grow this matrix with every defect found.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_learnable
from unlearnable.cli import main

FAST_ATTACK = ["--epochs", "1", "--steps", "1", "--batch-size", "64", "--device", "cpu"]
FAST_DEMO = ["--epochs", "1", "--batch-size", "64", "--device", "cpu", "--victim-epochs", "1"]


# -- the shared workspace ------------------------------------------------------------------

def _png_tree(root: Path, classes=("a", "b"), n=3, size=8):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (size, size), 40 * i + (100 if c == "b" else 0)).save(root / c / f"{i}.png")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """One folder of good and bad inputs for every case; cases must leave it as it was."""
    root = tmp_path_factory.mktemp("ws")
    x, y = make_learnable(240, seed=1)
    names = np.array(["a", "b", "c", "d"])
    np.savez(root / "good.npz", x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:], class_names=names)
    (root / "nested").mkdir()
    np.savez(root / "nested" / "good.npz", x_train=x[:160], y_train=y[:160], class_names=names)
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    np.savez(root / "object.npz", x_train=np.array([{"run": "code"}], dtype=object), y_train=np.zeros(1))
    np.savez(root / "empty.npz", x_train=np.zeros((0, 16, 16), np.uint8), y_train=np.zeros(0, np.int64))
    np.savez(root / "nanlabels.npz", x_train=x[:4], y_train=np.array([0.0, np.nan, 1.0, 0.0]))
    np.savez(root / "hugelabel.npz", x_train=x[:4], y_train=np.array([0, 1, 20000, 1]))
    _png_tree(root / "folder" / "train")
    _png_tree(root / "folder" / "test")
    _png_tree(root / "photos")
    _png_tree(root / "badimg")
    (root / "badimg" / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "notes.txt").write_text("my thesis\n")
    (root / "foreign").mkdir()
    (root / "foreign" / "thesis.txt").write_text("years of work\n")
    (root / "not-yaml.yaml").write_text("name: [unclosed\n  - : :\n")
    (root / "model").mkdir()
    (root / "model" / "model.json").write_text('{"model": "cnn", "in_channels": "one"}')
    (root / "model" / "model.safetensors").write_bytes(b"\0" * 16)
    (root / "specs").mkdir()
    np.savez(root / "specs" / "tiny.npz", x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:])
    tiny = (Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text()
    (root / "specs" / "tiny.yaml").write_text(tiny)
    (root / "specs" / "nan.yaml").write_text(tiny.replace("epochs: 2, batch_size: 32}}",
                                                          "epochs: 2, batch_size: 32, lr: .nan}}"))
    (root / "specs" / "negseed.yaml").write_text(tiny.replace("seeds: [0, 1]", "seeds: [-1]"))
    (root / "noperturbation" / "train" / "0_a").mkdir(parents=True)
    Image.new("L", (16, 16)).save(root / "noperturbation" / "train" / "0_a" / "00000.png")
    (root / "noperturbation" / "manifest.json").write_text(json.dumps({
        "format": "unlearnable-poisoned", "format_version": 1, "method": "x", "eps_255": 8, "linf_255": 0,
        "image_shape": [16, 16, 1], "class_names": ["a"], "class_folders": ["0_a"],
        "counts": {"train": 1, "test": 0, "per_class": [1], "perturbed": 0}}))
    entry = {"input": "a/0.png", "output": "a/0.png", "class": "a", "sha256": "0" * 64,
             "output_sha256": "0" * 64, "settings": "k"}
    for name, images in PROTECT_MANIFESTS.items():
        (root / "pm" / name).mkdir(parents=True)
        doc = images if name in ("top-level-list", "not-json") else {"format": "unlearnable-protect/1",
                                                                         "images": images(entry)}
        (root / "pm" / name / "manifest.json").write_text(doc if name == "not-json" else json.dumps(doc))
    (root / "badmanifest").mkdir()
    (root / "badmanifest" / "manifest.json").write_text(json.dumps({"format": "unlearnable-poisoned"}))
    np.savez(root / "badmanifest" / "perturbation.npz", delta=np.zeros((4, 16, 16, 1), np.int16),
             labels=np.zeros(4, np.int64), source_indices=np.arange(4))
    return root


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its type, mode and (for files) content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        kind = "dir" if p.is_dir() else "file"
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
        out[str(p.relative_to(root))] = (kind, st.st_mode, digest)
    return out


def run_cli(argv):
    try:
        code = main(["-q", *argv])
    except SystemExit as e:  # the parser refused a flag
        code = e.code
    return code


# -- the matrix ------------------------------------------------------------------------------
# (id, argv with {ws} for the workspace, needle in the error line). Outputs point at paths
# that must not come to exist ({ws}/o*) unless the case is about an existing path.

def _poison(data, out="{ws}/o", *extra):
    return ["poison", "--method", "mi-ue", "--data", data, "--out", out, *FAST_ATTACK, *extra]


def _train(data, out="{ws}/o", *extra):
    return ["train", "--data", data, "--epochs", "1", "--device", "cpu", "--out", out, *extra]


PROTECT_MANIFESTS = {  # damaged OUT_DIR/manifest.json of protect: (name -> images field or document)
    "images-a-dict": lambda e: {"a/0.png": e},
    "images-a-string": lambda e: "a/0.png",
    "entry-not-object": lambda e: [e, 3],
    "entry-without-sha256": lambda e: [{k: v for k, v in e.items() if k != "sha256"}],
    "class-null": lambda e: [{**e, "class": None}],
    "output-escapes": lambda e: [{**e, "output": "../../etc/passwd"}],
    "output-absolute": lambda e: [{**e, "output": "/etc/passwd"}],
    "top-level-list": [1, 2],
    "not-json": "{ nope",
}

CORRUPT_DATA = [  # (name, data spec, needle)
    ("missing", "{ws}/nope.npz", "nope.npz"),
    ("corrupt-npz", "{ws}/corrupt.npz", "corrupt.npz"),
    ("object-npz", "{ws}/object.npz", "object.npz"),
    ("empty-npz", "{ws}/empty.npz", "no training images"),
    ("nan-labels", "{ws}/nanlabels.npz", "nanlabels.npz"),
    ("huge-label", "{ws}/hugelabel.npz", "hugelabel.npz"),
    ("corrupt-png", "{ws}/badimg", "1.png"),
    ("text-file", "{ws}/notes.txt", "notes.txt"),
    ("bad-poisoned-manifest", "{ws}/badmanifest", "manifest.json"),
    ("poisoned-without-perturbation", "{ws}/noperturbation", "perturbation.npz"),
]

CASES = []
for name, spec, needle in CORRUPT_DATA:
    CASES += [
        (f"poison-{name}", _poison(spec), needle),
        (f"train-{name}", _train(spec), needle),
        (f"evaluate-{name}", ["evaluate", "--data", spec, "--cells", "cnn:st", "--epochs", "1", "--out", "{ws}/o"],
         needle),
        (f"demo-{name}", ["demo", "--data", spec, "--out", "{ws}/o", "--subset", "8", *FAST_DEMO], needle),
        (f"compare-{name}", ["compare", "--data", spec, "--methods", "random", "--out", "{ws}/o"], needle),
        (f"protect-reference-{name}", ["protect", "{ws}/photos", "{ws}/o", "--reference", spec, "--epochs", "1",
                                       "--steps", "1", "--device", "cpu"], needle),
    ]

BAD_NUMBERS = [  # flags that must refuse NaN, infinity and out-of-range values
    ("poison-eps-nan", _poison("{ws}/good.npz", "{ws}/o", "--eps", "nan"), "--eps"),
    ("poison-eps-inf", _poison("{ws}/good.npz", "{ws}/o", "--eps", "inf"), "--eps"),
    ("poison-eps-255+", _poison("{ws}/good.npz", "{ws}/o", "--eps", "300"), "(0, 255] (1/255 units)"),
    ("poison-eps-zero-den", _poison("{ws}/good.npz", "{ws}/o", "--eps", "8/0"), "--eps"),
    ("poison-step-nan", _poison("{ws}/good.npz", "{ws}/o", "--step-size", "nan"), "--step-size"),
    ("poison-lr-nan", _poison("{ws}/good.npz", "{ws}/o", "--lr", "nan"), "--lr"),
    ("poison-lr-negative", _poison("{ws}/good.npz", "{ws}/o", "--lr", "-0.1"), "--lr"),
    ("poison-ratio-nan", _poison("{ws}/good.npz", "{ws}/o", "--ratio", "nan"), "--ratio"),
    ("poison-ratio-2", _poison("{ws}/good.npz", "{ws}/o", "--ratio", "2"), "--ratio"),
    ("poison-seed-negative", _poison("{ws}/good.npz", "{ws}/o", "--seed", "-1"), "--seed"),
    ("poison-subset-zero", _poison("{ws}/good.npz", "{ws}/o", "--subset", "0"), "--subset"),
    ("poison-unknown-model", _poison("{ws}/good.npz", "{ws}/o", "--model", "resnet-9000"), "resnet-9000"),
    ("poison-no-cuda", _poison("{ws}/good.npz", "{ws}/o", "--device", "cuda:7"), "cuda:7"),
    ("poison-bad-device", _poison("{ws}/good.npz", "{ws}/o", "--device", "quantum"), "quantum"),
    ("poison-bad-classes", _poison("{ws}/good.npz", "{ws}/o", "--classes", "zebra"), "zebra"),
    ("demo-seed-negative", ["demo", "--out", "{ws}/o", "--seed", "-3"], "--seed"),
    ("demo-eps-nan", ["demo", "--out", "{ws}/o", "--eps", "nan"], "--eps"),
    ("demo-unknown-method", ["demo", "--data", "{ws}/good.npz", "--out", "{ws}/o", "--method", "nope"], "nope"),
    ("train-lr-nan", _train("{ws}/good.npz", "{ws}/o", "--lr", "nan"), "--lr"),
    ("train-lr-inf", _train("{ws}/good.npz", "{ws}/o", "--lr", "inf"), "--lr"),
    ("train-seed-negative", _train("{ws}/good.npz", "{ws}/o", "--seed", "-1"), "--seed"),
    ("train-at-eps-nan", _train("{ws}/good.npz", "{ws}/o", "--protocol", "at", "--at-eps", "nan"), "--at-eps"),
    ("train-epochs-negative", _train("{ws}/good.npz", "{ws}/o", "--epochs", "-2"), "--epochs"),
    ("train-defense-nan", _train("{ws}/good.npz", "{ws}/o", "--defense", "cutmix:nan"), "cutmix"),
    ("train-defense-inf", _train("{ws}/good.npz", "{ws}/o", "--defense", "mixup:inf"), "mixup"),
    ("train-unknown-model", _train("{ws}/good.npz", "{ws}/o", "--model", "vgg-1000"), "vgg-1000"),
    ("evaluate-lr-inf", ["evaluate", "--data", "{ws}/good.npz", "--cells", "cnn:st", "--lr", "inf",
                         "--out", "{ws}/o"], "--lr"),
    ("measure-acc-nan", ["measure", "--poisoned", "{ws}/nope", "--acc", "nan", "--clean-acc", "0.9"], "--acc"),
    ("measure-seed-negative", ["measure", "--poisoned", "{ws}/nope", "--seed", "-1"], "--seed"),
    ("measure-slices-zero", ["measure", "--poisoned", "{ws}/nope", "--slices", "0"], "--slices"),
    ("protect-eps-nan", ["protect", "{ws}/photos", "{ws}/o", "--eps", "nan"], "--eps"),
    ("protect-seed-negative", ["protect", "{ws}/photos", "{ws}/o", "--seed", "-1"], "--seed"),
    ("verify-holdout-nan", ["verify", "{ws}/photos", "{ws}/o", "--out", "{ws}/o.json", "--holdout", "nan"],
     "--holdout"),
    ("verify-holdout-2", ["verify", "{ws}/photos", "{ws}/o", "--out", "{ws}/o.json", "--holdout", "2"],
     "--holdout"),
    ("verify-seed-negative", ["verify", "{ws}/photos", "{ws}/o", "--out", "{ws}/o.json", "--seed", "-1"], "--seed"),
    ("compare-seed-negative", ["compare", "--out", "{ws}/o", "--seed", "-1"], "--seed"),
    ("compare-empty-methods", ["compare", "--data", "{ws}/good.npz", "--methods", ",", "--out", "{ws}/o"],
     "methods"),
    ("compare-hole-in-methods", ["compare", "--data", "{ws}/good.npz", "--methods", "random,,ar",
                                 "--out", "{ws}/o"], "methods"),
    ("compare-unknown-method", ["compare", "--data", "{ws}/good.npz", "--methods", "random,nope",
                                "--out", "{ws}/o"], "nope"),
]
CASES += BAD_NUMBERS
for name in PROTECT_MANIFESTS:
    CASES += [
        (f"protect-manifest-{name}", ["protect", "{ws}/photos", f"{{ws}}/pm/{name}", "--device", "cpu"],
         "manifest.json"),
        (f"verify-manifest-{name}", ["verify", "{ws}/photos", f"{{ws}}/pm/{name}", "--out", "{ws}/o.json",
                                     "--device", "cpu"], "manifest.json"),
    ]

BAD_OUTPUTS = [
    # an existing file, a path under a file, a device node, a folder this tool did not write
    ("poison-out-file", _poison("{ws}/good.npz", "{ws}/notes.txt"), "not a folder"),
    ("poison-out-under-file", _poison("{ws}/good.npz", "{ws}/notes.txt/sub"), "notes.txt is a file"),
    ("poison-out-devnull", _poison("{ws}/good.npz", "/dev/null"), "/dev/null"),
    ("poison-foreign-overwrite", _poison("{ws}/good.npz", "{ws}/foreign", "--overwrite"), "not written by unlearnable"),
    ("poison-foreign", _poison("{ws}/good.npz", "{ws}/foreign"), "not written by unlearnable"),
    # the input and the output: the same, one inside the other, either way
    ("poison-out-is-input", _poison("{ws}/folder", "{ws}/folder", "--overwrite"), "inside the input"),
    ("poison-out-in-input", _poison("{ws}/folder", "{ws}/folder/train/a/protected"), "inside the input"),
    ("poison-out-holds-input", _poison("{ws}/nested/good.npz", "{ws}/nested", "--overwrite"), "contains the input"),
    ("train-out-file", _train("{ws}/good.npz", "{ws}/notes.txt"), "not a folder"),
    ("train-out-under-file", _train("{ws}/good.npz", "{ws}/notes.txt/m"), "notes.txt is a file"),
    ("train-out-in-input", _train("{ws}/folder", "{ws}/folder/model"), "inside the input"),
    ("train-foreign-overwrite", _train("{ws}/good.npz", "{ws}/foreign", "--overwrite"), "not written by unlearnable"),
    ("evaluate-out-file", ["evaluate", "--data", "{ws}/good.npz", "--cells", "cnn:st", "--out", "{ws}/notes.txt"],
     "not a folder"),
    ("evaluate-foreign", ["evaluate", "--data", "{ws}/good.npz", "--cells", "cnn:st", "--out", "{ws}/foreign"],
     "not an evaluation"),
    ("evaluate-out-in-input", ["evaluate", "--data", "{ws}/folder", "--cells", "cnn:st",
                               "--out", "{ws}/folder/eval"], "inside the input"),
    ("demo-out-file", ["demo", "--data", "{ws}/good.npz", "--out", "{ws}/notes.txt"], "not a folder"),
    ("demo-foreign-overwrite", ["demo", "--data", "{ws}/good.npz", "--out", "{ws}/foreign", "--overwrite"],
     "not written by unlearnable"),
    ("demo-out-is-input", ["demo", "--data", "{ws}/folder", "--out", "{ws}/folder", "--overwrite"],
     "inside the input"),
    ("compare-out-file", ["compare", "--data", "{ws}/good.npz", "--methods", "random", "--out", "{ws}/notes.txt"],
     "not a folder"),
    ("compare-foreign-overwrite", ["compare", "--data", "{ws}/good.npz", "--methods", "random",
                                   "--out", "{ws}/foreign", "--overwrite"], "not a comparison"),
    ("compare-out-holds-input", ["compare", "--data", "{ws}/nested/good.npz", "--methods", "random",
                                 "--out", "{ws}/nested"], "contains the input"),
    ("measure-out-dir", ["measure", "--poisoned", "{ws}/nope", "--out", "{ws}/foreign"], "is a folder"),
    ("measure-out-devnull", ["measure", "--poisoned", "{ws}/nope", "--out", "/dev/null"], "not a regular file"),
    ("measure-out-under-file", ["measure", "--poisoned", "{ws}/nope", "--out", "{ws}/notes.txt/r.json"],
     "notes.txt is a file"),
    ("protect-out-file", ["protect", "{ws}/photos", "{ws}/notes.txt"], "notes.txt"),
    # (OUT_DIR inside IN_DIR is allowed for protect: its subtree is not scanned, docs/protect.md)
    ("protect-input-in-out", ["protect", "{ws}/folder/train", "{ws}/folder"], "folder"),
    ("verify-out-dir", ["verify", "{ws}/photos", "{ws}/foreign", "--out", "{ws}/foreign"], "foreign"),
    ("verify-out-in-input", ["verify", "{ws}/photos", "{ws}/foreign", "--out", "{ws}/photos/r.json"],
     "inside the input"),
    ("verify-out-devnull", ["verify", "{ws}/photos", "{ws}/foreign", "--out", "/dev/null"], "/dev/null"),
    ("run-missing-config", ["run", "{ws}/nope.yaml"], "nope.yaml"),
    ("run-not-yaml", ["run", "{ws}/not-yaml.yaml"], "not-yaml.yaml"),
    ("run-config-is-data", ["run", "{ws}/good.npz"], "good.npz"),
    ("run-nan-lr", ["run", "{ws}/specs/nan.yaml", "--out", "{ws}/o"], "lr must be a finite number"),
    ("run-negative-seed", ["run", "{ws}/specs/negseed.yaml", "--out", "{ws}/o"], "non-negative"),
    ("run-out-file", ["run", "{ws}/specs/tiny.yaml", "--out", "{ws}/notes.txt"], "not a folder"),
    ("run-out-under-file", ["run", "{ws}/specs/tiny.yaml", "--out", "{ws}/notes.txt/r"], "notes.txt is a file"),
    ("report-missing", ["report", "{ws}/nope"], "nope"),
    ("report-a-file", ["report", "{ws}/notes.txt"], "notes.txt"),
    ("report-not-a-run", ["report", "{ws}/foreign"], "foreign"),
]
CASES += BAD_OUTPUTS


@pytest.mark.parametrize("argv,needle", [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_refused_in_one_line_and_nothing_changes(ws, capsys, argv, needle):
    before = snapshot(ws)
    code = run_cli([a.replace("{ws}", str(ws)) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("unlearnable: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert needle.replace("{ws}", str(ws)) in lines[0], lines[0]
    after = snapshot(ws)
    assert after == before, {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
                             "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k])}
    assert not Path(f"{ws}/o").exists() and not Path(f"{ws}/o.partial").exists()


def test_a_bug_is_one_line_with_a_traceback_file(capsys, monkeypatch):
    """An unexpected exception: one line saying it is a bug, exit 1, the traceback in a file."""
    import unlearnable.cli.measure as measure_cmd

    def broken(args):
        raise ZeroDivisionError("something the code did not expect")

    monkeypatch.setattr(measure_cmd, "cmd_measure", broken)
    code = run_cli(["measure", "--poisoned", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "internal error (a bug)" in err[0] and "ZeroDivisionError" in err[0]
    path = Path(err[0].rsplit("traceback in ", 1)[1])
    text = path.read_text()
    assert "Traceback" in text and "something the code did not expect" in text
    path.unlink()


@pytest.mark.parametrize("errno_name,needle", [("ENOSPC", "no space left on device while writing"),
                                               ("EACCES", "Permission denied"), ("ENOTDIR", "Not a directory")])
def test_os_errors_are_one_line_naming_the_file(capsys, monkeypatch, errno_name, needle):
    import errno

    import unlearnable.cli.measure as measure_cmd

    def failing(args):
        code = getattr(errno, errno_name)
        raise OSError(code, os.strerror(code), "/data/out/x.png")

    monkeypatch.setattr(measure_cmd, "cmd_measure", failing)
    code = run_cli(["measure", "--poisoned", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0] and "/data/out/x.png" in err[0]


# -- data loss and false success (issue 15, items 1-4, 12, 13, 15) ------------------------------

FAST_CFG = {"epochs": 1, "pgd_steps": 1, "batch_size": 64, "device": "cpu"}


def test_overwrite_replaces_only_our_own_output(tiny_npz, tmp_path):
    from unlearnable.errors import UnlearnableError
    from unlearnable.poison import poison_dataset
    out = tmp_path / "p"
    poison_dataset("random", tiny_npz, out)
    with pytest.raises(UnlearnableError, match="already holds a protected dataset"):
        poison_dataset("random", tiny_npz, out)
    m = poison_dataset("random", tiny_npz, out, seed=1, overwrite=True)
    assert m["seed"] == 1
    foreign_partial = tmp_path / "q.partial"  # a user's folder that happens to have that name
    foreign_partial.mkdir()
    (foreign_partial / "notes.txt").write_text("mine")
    with pytest.raises(UnlearnableError, match="not an unfinished run"):
        poison_dataset("random", tiny_npz, tmp_path / "q", overwrite=True)
    assert (foreign_partial / "notes.txt").read_text() == "mine"


def test_a_diverged_generation_writes_nothing(tiny_npz, tmp_path, monkeypatch):
    import torch

    from unlearnable.attacks import get_attack
    from unlearnable.attacks.base import AttackResult
    from unlearnable.errors import UnlearnableError
    from unlearnable.poison import poison_dataset
    cls = get_attack("random")

    def nan_generate(self, train, **k):
        delta = torch.zeros((len(train), train.channels, *train.image_size))
        delta[0, 0, 0, 0] = float("nan")
        return AttackResult(delta, {"history": []})

    monkeypatch.setattr(cls, "generate", nan_generate)
    with pytest.raises(UnlearnableError, match="NaN or infinite"):
        poison_dataset("random", tiny_npz, tmp_path / "p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.npz"]

    def nan_loss(self, train, **k):
        return AttackResult(torch.zeros((len(train), train.channels, *train.image_size)),
                            {"history": [{"epoch": 1, "loss": float("nan")}]})

    monkeypatch.setattr(cls, "generate", nan_loss)
    with pytest.raises(UnlearnableError, match="loss became nan"):
        poison_dataset("random", tiny_npz, tmp_path / "p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.npz"]


def test_nan_options_are_refused_by_the_library_too(tiny_npz, tmp_path):
    from unlearnable.errors import UnlearnableError
    from unlearnable.poison import poison_dataset
    from unlearnable.train import victim_preset
    for key in ("lr", "eps", "step_size"):
        with pytest.raises(UnlearnableError, match=f"{key} must be a finite number"):
            poison_dataset("mi-ue", tiny_npz, tmp_path / "p", overrides={**FAST_CFG, key: float("nan")})
    with pytest.raises(UnlearnableError, match="lr must be a finite number"):
        victim_preset("cpu", lr=float("inf"))
    with pytest.raises(UnlearnableError, match="seed must be a non-negative integer"):
        poison_dataset("random", tiny_npz, tmp_path / "p", seed=-1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.npz"]


def test_a_perturbation_that_rounds_to_zero_is_an_error(tiny_npz, tmp_path, capsys):
    code = run_cli(["poison", "--method", "random", "--data", str(tiny_npz), "--out", str(tmp_path / "p"),
                    "--eps", "0.4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "rounds to zero on every selected image" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.npz"]


def test_manifests_are_strict_json(tmp_path):
    from unlearnable.fsutil import write_json
    with pytest.raises(ValueError, match="refusing to write"):
        write_json(tmp_path / "m.json", {"loss": float("nan")})
    assert not list(tmp_path.iterdir())


def test_resume_removes_a_writer_killed_midway(tiny_npz, tmp_path):
    """kill -9 in the write phase leaves ``.OUT.writing-XXXX``; the next successful run removes it."""
    from unlearnable.poison import poison_dataset
    stale = tmp_path / ".p.writing-abc123"
    (stale / "train" / "0_a").mkdir(parents=True)
    (stale / "train" / "0_a" / "00000.png").write_bytes(b"half")
    other = tmp_path / ".other.writing-abc123"  # another output's: not touched
    other.mkdir()
    poison_dataset("random", tiny_npz, tmp_path / "p", resume=True)
    assert not stale.exists() and other.exists()


def test_an_early_error_leaves_no_partial_folder(tiny_npz, tmp_path):
    from unlearnable.errors import UnlearnableError
    from unlearnable.poison import poison_dataset
    for bad in ({"model": "resnet-9000"}, {"device": "cuda:9"}):
        with pytest.raises(UnlearnableError):
            poison_dataset("mi-ue", tiny_npz, tmp_path / "p", overrides={**FAST_CFG, **bad})
    with pytest.raises(UnlearnableError):
        poison_dataset("mi-ue", tmp_path / "nope.npz", tmp_path / "p", overrides=FAST_CFG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.npz"]
    poison_dataset("random", tiny_npz, tmp_path / "p")  # the corrected rerun needs no --resume


@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_outputs_follow_the_umask(tiny_npz, tmp_path, umask, dir_mode, file_mode):
    from unlearnable.poison import poison_dataset
    old = os.umask(umask)
    try:
        poison_dataset("random", tiny_npz, tmp_path / "p")
    finally:
        os.umask(old)
    out = tmp_path / "p"
    assert out.stat().st_mode & 0o777 == dir_mode
    for p in out.rglob("*"):
        assert p.stat().st_mode & 0o777 == (dir_mode if p.is_dir() else file_mode), p


def test_a_damaged_evaluate_cache_is_one_line(tiny_npz, tmp_path, capsys):
    argv = ["evaluate", "--data", str(tiny_npz), "--cells", "cnn:st", "--epochs", "1", "--batch-size", "64",
            "--device", "cpu", "--out", str(tmp_path / "e")]
    assert run_cli(argv) == 0
    capsys.readouterr()
    cached = next((tmp_path / "e" / "cells").rglob("metrics.json"))
    for damage in ("{ not json", '{"settings": {}}', "[1, 2]"):
        cached.write_text(damage)
        code = run_cli(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and str(cached) in err[0], err


def test_a_refused_checkpoint_is_one_line_and_never_suggests_unpickling(tiny_npz, tmp_path, capsys):
    import pickle
    work = tmp_path / "p.partial"
    work.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (work / "checkpoint.pt").write_bytes(pickle.dumps({"x": Evil()}))
    code = run_cli(["poison", "--method", "mi-ue", "--data", str(tiny_npz), "--out", str(tmp_path / "p"),
                    "--resume", *FAST_ATTACK])
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "checkpoint.pt" in err[0], cap.err
    assert "weights_only" not in cap.err and "pwned" not in cap.out


# -- disk full (issue 15, item 7) ---------------------------------------------------------------

def _enospc_on_call(real, n):
    """``real`` that raises ENOSPC (naming its destination) on its ``n``-th call."""
    import errno
    calls = {"n": 0}

    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            dest = next((x for x in a if isinstance(x, (str, Path))), "?")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
        return real(*a, **k)
    return wrapped


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".unlearnable-protect")}


def test_protect_disk_full_is_one_line_and_the_rerun_completes(tmp_path, capsys, monkeypatch):
    import unlearnable.protect.folder as folder_mod
    x, y = make_learnable(240, size=16, channels=1, classes=4, seed=3)
    ref = tmp_path / "ref.npz"
    np.savez(ref, x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:], class_names=np.array(list("abcd")))
    src = tmp_path / "in"
    _png_tree(src, classes=("cats", "dogs"), n=3, size=20)
    flags = ["--reference", str(ref), "--epochs", "1", "--steps", "2", "--working-size", "16", "--batch-size", "2",
             "--reference-per-class", "8", "--device", "cpu"]
    old_umask = os.umask(0o022)
    try:
        assert run_cli(["protect", str(src), str(tmp_path / "clean"), *flags]) == 0
    finally:
        os.umask(old_umask)
    capsys.readouterr()
    for p in (tmp_path / "clean").rglob("*"):  # shared files get the usual modes (item 15)
        if not p.name.startswith(".unlearnable-protect"):
            assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644), p
    monkeypatch.setattr(folder_mod, "save_image", _enospc_on_call(folder_mod.save_image, 3))
    code = run_cli(["protect", str(src), str(tmp_path / "full"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no space left on device while writing" in err[0], err
    assert not [p for p in (tmp_path / "full").rglob("*") if p.name.endswith(".tmp")]  # no half-written file
    monkeypatch.undo()
    assert run_cli(["protect", str(src), str(tmp_path / "full"), *flags]) == 0
    a, b = _files(tmp_path / "clean"), _files(tmp_path / "full")
    pngs = [k for k in a if k.endswith(".png")]
    assert len(pngs) == 6 and {k: a[k] for k in pngs} == {k: b[k] for k in pngs}


def test_poison_disk_full_is_one_line_and_leaves_nothing(tiny_npz, tmp_path, capsys, monkeypatch):
    import unlearnable.data.poisoned as poisoned_mod
    real_save = poisoned_mod.Image.Image.save
    monkeypatch.setattr(poisoned_mod.Image.Image, "save", _enospc_on_call(real_save, 5))
    code = run_cli(["poison", "--method", "random", "--data", str(tiny_npz), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no space left on device while writing" in err[0], err
    # No output and no half-written folder; the generation's state stays, for --resume.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.partial", "tiny.npz"]
    monkeypatch.undo()
    assert run_cli(["poison", "--method", "random", "--data", str(tiny_npz), "--out", str(tmp_path / "p"),
                    "--resume"]) == 0
    assert run_cli(["poison", "--method", "random", "--data", str(tiny_npz), "--out", str(tmp_path / "q")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "q", "tiny.npz"]
    assert _files(tmp_path / "p").keys() == _files(tmp_path / "q").keys()
    assert {k: v for k, v in _files(tmp_path / "p").items() if k.endswith(".png")} == \
        {k: v for k, v in _files(tmp_path / "q").items() if k.endswith(".png")}


@pytest.mark.parametrize("meta", ['{"model": "cnn", "in_channels": "one"}', "[1]", "{ nope",
                                  '{"model": 3, "in_channels": 1, "num_classes": 4, "image_size": 16}',
                                  '{"model": "cnn", "in_channels": 1, "num_classes": -4, "image_size": 16}'])
def test_a_malformed_model_json_is_one_line(tmp_path, meta):
    from unlearnable.errors import UnlearnableError
    from unlearnable.models.checkpoint import load_model
    (tmp_path / "model.json").write_text(meta)
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(UnlearnableError, match="model.json") as e:
        load_model(tmp_path)
    assert "\n" not in str(e.value)


def test_damaged_weights_are_one_line(tmp_path):
    from unlearnable.errors import UnlearnableError
    from unlearnable.models.checkpoint import load_model
    (tmp_path / "model.json").write_text('{"model": "cnn", "in_channels": 1, "num_classes": 4, "image_size": 16}')
    (tmp_path / "model.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{not a header}")
    with pytest.raises(UnlearnableError, match="model.safetensors") as e:
        load_model(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("command", ["train", "poison", "measure", "verify", "run"])
def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch, command, tiny_npz):
    """Read-only as the tests' user cannot be made (root writes anywhere), so the check is
    shown with ``os.access`` reporting the folder read-only, as it does for a normal user."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ro else real_access(p, mode, **k))
    spec = tmp_path / "tiny.yaml"
    spec.write_text((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    argv = {"train": _train(str(tiny_npz), str(ro / "m")),
            "poison": _poison(str(tiny_npz), str(ro / "p")),
            "measure": ["measure", "--poisoned", str(tmp_path / "nope"), "--out", str(ro / "r.json")],
            "verify": ["verify", str(tmp_path / "in"), str(tmp_path / "out"), "--out", str(ro / "r.json")],
            "run": ["run", str(spec), "--out", str(ro / "run")]}[command]
    code = run_cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"no permission to write in {ro}" in err[0], err
    assert not list(ro.iterdir())


def test_one_fraction_parser_for_flags_and_configs():
    """units.fraction is the one reading of "a/b": budgets on the command line and
    fractions in a run config agree, and malformed fractions are refused, never guessed."""
    from unlearnable.experiments.config import fractions
    from unlearnable.units import fraction, parse_budget

    assert fraction("8/255") == parse_budget("8/255") == parse_budget("8") == 8 / 255
    assert fraction(" 1 / 32 ") == 1 / 32 and fraction("crop/flip") is None and fraction("8") is None
    assert fractions({"eps": "8/255", "aug": ["crop/flip", "1/4"]}) == {"eps": 8 / 255, "aug": ["crop/flip", 0.25]}
    for bad in ("8/0", "x/255", "8/inf", "8/255/2"):
        with pytest.raises(ValueError):
            parse_budget(bad)
    with pytest.raises(ValueError, match="division by zero"):
        fraction("1/0")

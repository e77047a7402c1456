"""`unlearnable measure` end to end on a tiny synthetic protected folder, plus covariance,
separability and relations sanity checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unlearnable.cli import main
from unlearnable.data import ImageDataset, write_poisoned
from unlearnable.errors import UnlearnableError
from unlearnable.measure import (compare_covariance, covariance_summary, linear_train_accuracy, mi_gap, relate,
                                 separability_report, sliced_mi, spearman)
from unlearnable.models import build_model
from unlearnable.models.checkpoint import save_model
from unlearnable.progress import set_quiet

set_quiet(True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("measure")
    rng = np.random.default_rng(0)
    n, k = 90, 3
    labels = np.repeat(np.arange(k), n // k)
    images = rng.integers(20, 235, size=(n, 8, 8, 1), dtype=np.uint8)
    clean = ImageDataset(images, labels, ["a", "b", "c"], source="synthetic")
    test = ImageDataset(rng.integers(0, 255, size=(30, 8, 8, 1), dtype=np.uint8), np.repeat(np.arange(k), 10),
                        ["a", "b", "c"], source="synthetic:test")
    delta = rng.integers(-4, 5, size=images.shape)
    poisoned = np.clip(images.astype(int) + delta, 0, 255).astype(np.uint8)
    write_poisoned(root / "pois", clean, poisoned, eps=8 / 255, method="random", test=test)
    model = build_model("cnn", 1, k, 8)
    save_model(model, root / "model", name="cnn", in_channels=1, num_classes=k, image_size=8)
    np.savez(root / "clean.npz", x_train=images, y_train=labels)
    return root


def test_measure_cli_writes_json_and_table(tiny, capsys):
    out = tiny / "res.json"
    rc = main(["-q", "measure", "--poisoned", str(tiny / "pois"), "--model", str(tiny / "model"),
               "--estimators", "hist,hist-mm,kde,ksg", "--slices", "40", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "30 per class" in text and "ksg" in text and "MI gap" in text and "m" in text
    assert "g: one checkpoint for every set" in text
    res = json.loads(out.read_text())
    assert res["g"] == "checkpoint" and res["results"][0]["model"] == res["model"]
    assert res["features"]["n_per_class"] == {"0": 30, "1": 30, "2": 30}
    ref = res["reference"]["ksg"]
    assert ref["m"] == 40 and ref["conditional"] and ref["params"]["k"] == 3 and ref["se"] > 0
    r = res["results"][0]
    assert r["method"] == "random"
    for name in ("hist", "hist-mm", "kde", "ksg"):
        g = r["mi_gap"][name]
        assert g["gap"] == pytest.approx(res["reference"][name]["mean"] - r["mi"][name]["mean"])
        assert g["se"] > 0 and g["se_paired"] >= 0
    assert {"logdet", "trace", "ridge"} <= set(r["covariance"]["clean"])
    assert 0 <= r["separability"]["noise_train_acc"] <= 1


def test_measure_cli_with_clean_spec_trained_model_and_mine(tiny, capsys):
    # the same folder twice: the slice-by-slice gap difference between them is exactly 0
    out = tiny / "res2.json"
    rc = main(["-q", "measure", "--poisoned", str(tiny / "pois"), str(tiny / "pois"), "--clean",
               str(tiny / "clean.npz"), "--model", "cnn", "--train-epochs", "1", "--estimators", "ksg,mine",
               "--slices", "4", "--pooled", "--no-separability", "--no-covariance", "--device", "cpu",
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "pooled" in text and "mine" in text
    res = json.loads(out.read_text())
    assert res["model"]["trained_here"] and res["reference"]["mine"]["m"] == 4
    # a registry name means the paper's g: one victim on the clean images (the reference)
    # and one on the poisoned folder, trained once although the folder is given twice
    assert res["g"] == "victim" and "g: the victim trained on each set" in text
    assert res["model"]["trained_on"] == "the clean images"
    assert [r["model"]["trained_on"] for r in res["results"]] == [str(tiny / "pois")] * 2
    vf = res["results"][1]["mi_gap"]["ksg"]["vs_first"]
    assert vf["diff"] == 0 and vf["se_paired"] == 0


def test_measure_mi_model_clean_keeps_one_clean_g(tiny, capsys):
    """--mi-model clean measures every set with the clean-trained g: same reference as the
    default (same clean victim), different per-set MI (another network)."""
    def measure(*extra):
        out = tiny / f"res-{len(extra)}.json"
        rc = main(["-q", "measure", "--poisoned", str(tiny / "pois"), "--model", "cnn", "--train-epochs", "1",
                   "--estimators", "ksg", "--slices", "8", "--no-separability", "--device", "cpu",
                   "--out", str(out), *extra])
        assert rc == 0
        return json.loads(out.read_text()), capsys.readouterr().out
    victim, victim_text = measure()
    clean, clean_text = measure("--mi-model", "clean")
    assert clean["g"] == "clean" and clean["results"][0]["model"] == clean["model"]
    assert "g: the clean victim for every set (not the paper's definition)" in clean_text
    assert "own victim (g) test acc" in victim_text and "own victim" not in clean_text
    assert victim["reference"]["ksg"]["mean"] == clean["reference"]["ksg"]["mean"]
    assert victim["results"][0]["mi"]["ksg"]["mean"] != clean["results"][0]["mi"]["ksg"]["mean"]
    assert victim["results"][0]["covariance"] != clean["results"][0]["covariance"]  # under the set's own g


@pytest.mark.parametrize("argv, needle", [
    (["--estimators", "hist,bogus"], "bogus"),
    (["--model", "no-such-model-or-folder"], "no-such-model"),
    (["--slices", "0"], "positive"),
    (["--mi-model", "clean"], "--mi-model applies to --model NAME"),  # a checkpoint is one g
    (["--mi-model", "other"], "invalid choice"),
])
def test_measure_cli_bad_input_is_one_line_exit_2(tiny, capsys, argv, needle):
    rc = None
    try:
        rc = main(["-q", "measure", "--poisoned", str(tiny / "pois"), "--model", str(tiny / "model"), *argv])
    except SystemExit as e:  # argparse errors exit directly
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("unlearnable: error:") and needle in err


def test_measure_cli_missing_folder(tmp_path, capsys):
    rc = main(["-q", "measure", "--poisoned", str(tmp_path / "nothing"), "--model", "cnn"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not a protected dataset" in err


def test_covariance_sanity():
    rng = np.random.default_rng(0)
    d, n = 5, 4000
    labels = np.repeat([0, 1], n // 2)
    z = rng.standard_normal((n, d)) * 2.0  # per-class covariance 4 I
    s = covariance_summary(z, labels, ridge=1e-6)
    assert s["logdet"] == pytest.approx(d * np.log(4.0), abs=0.15)
    assert s["trace"] == pytest.approx(4.0 * d, rel=0.05)
    c = compare_covariance(z, 0.5 * z, labels, rel_ridge=1e-6)  # shrink: covariance / 4
    assert c["logdet_change"] == pytest.approx(-d * np.log(4.0), abs=1e-3)
    assert c["trace_ratio"] == pytest.approx(0.25)
    with pytest.raises(UnlearnableError):
        covariance_summary(z, labels[:10])


def test_linear_separability_sanity():
    rng = np.random.default_rng(1)
    n, k = 600, 3
    labels = np.repeat(np.arange(k), n // k)
    clean = rng.integers(0, 256, size=(n, 4, 4, 1)).astype(np.uint8)
    # class-wise constant patterns: perfectly linearly separable noise
    patterns = rng.integers(-8, 9, size=(k, 4, 4, 1))
    shortcut = np.clip(clean.astype(int) + patterns[labels], 0, 255).astype(np.uint8)
    rep = separability_report(clean, shortcut, labels)
    assert rep["noise_train_acc"] >= 0.99
    # i.i.d. noise in 16 dimensions for 600 samples: far from separable
    random = np.clip(clean.astype(int) + rng.integers(-8, 9, size=clean.shape), 0, 255).astype(np.uint8)
    rep = separability_report(clean, random, labels, include_clean=False)
    assert rep["noise_train_acc"] < 0.7 and "clean_train_acc" not in rep
    assert linear_train_accuracy(np.eye(3)[labels] + 0.0, labels) == 1.0


def test_relations():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 3))
    labels = np.repeat([0, 1], 200)
    ref = sliced_mi(x, x + 0.1 * rng.standard_normal(x.shape), labels, estimator="ksg", m=30, seed=0)
    res = sliced_mi(x, rng.standard_normal(x.shape), labels, estimator="ksg", m=30, seed=0)
    g = mi_gap(ref, res)
    assert g["gap"] == pytest.approx(ref.mean - res.mean) and g["gap"] > 0.3
    assert g["se"] == pytest.approx(np.hypot(ref.se, res.se)) and "se_paired" in g
    other = sliced_mi(x, x, labels, estimator="hist", m=30, seed=0)
    with pytest.raises(UnlearnableError):
        mi_gap(ref, other)
    s = spearman([1, 2, 3, 4], [0.1, 0.2, 0.25, 0.9])
    assert s["rho"] == pytest.approx(1.0) and s["n"] == 4
    r = relate(0.9, {"a": 0.8, "b": 0.5, "c": 0.1}, {"a": 0.01, "b": 0.05, "c": 0.2})
    assert r["acc_gap"]["c"] == pytest.approx(0.8) and r["spearman"]["rho"] == pytest.approx(1.0)

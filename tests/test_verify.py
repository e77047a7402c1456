"""``unlearnable verify``: end to end on a tiny protected folder, the split, the verdict."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_learnable
from unlearnable.cli import main
from unlearnable.errors import UnlearnableError
from unlearnable.protect import protect_folder, verify_folder
from unlearnable.protect.verify import _splits, verdict


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """12 crops of a real photo (one class) and a 4-class 16 px reference, protected."""
    from sklearn.datasets import load_sample_images
    root = tmp_path_factory.mktemp("verify")
    china = load_sample_images().images[0]
    src = root / "mine"
    src.mkdir()
    for i in range(12):
        r, c = 30 * i, 40 * (i % 5)
        Image.fromarray(china[r:r + 48, c:c + 64]).save(src / f"crop{i:02d}.png")
    x, y = make_learnable(200, size=16, channels=1, classes=4, seed=5)
    ref = root / "ref.npz"
    np.savez(ref, x_train=x[:120], y_train=y[:120], x_test=x[120:], y_test=y[120:],
             class_names=np.array(["a", "b", "c", "d"]))
    protect_folder(src, root / "prot", reference=str(ref), single_class=True, epochs=1, steps=2, working_size=16,
                   unit_size=12, reference_per_class=10, device="cpu")
    return src, root / "prot", str(ref)


def test_verify_end_to_end(tiny, tmp_path, capsys):
    src, prot, _ = tiny
    report_path = tmp_path / "report.json"
    code = main(["-q", "verify", str(src), str(prot), "--out", str(report_path), "--epochs", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "verdict:" in out
    rep = json.loads(report_path.read_text())
    assert rep["images"] == 12 and rep["classes"] == ["all"] and rep["left_out"] == []
    assert rep["split"]["held_out_images"] == 3  # 0.25 of 12, stratified
    # colour photos: a grayscale row too; and the early-stopping and fine-tuned-prior attackers
    assert set(rep["results"]) == {"none", "jpeg20", "grayscale", "early-stop", "prior-finetune"}
    assert set(rep["attackers"]) == {"early-stop", "prior-finetune"} and "prior-finetune" in out
    for r in rep["results"].values():
        for v in ("clean", "protected"):
            u, o = r[v]["protected_classes"], r[v]["other_classes"]
            assert u["n"] == 3 and 0 <= u["acc"] <= 1 and u["correct"] == round(u["acc"] * 3)
            assert o["n"] == 80 and 0 <= o["acc"] <= 1  # the reference's clean test split
        assert r["gap_pts"] == pytest.approx(100 * (r["clean"]["protected_classes"]["acc"]
                                                    - r["protected"]["protected_classes"]["acc"]), abs=0.01)
    assert "skipped" in rep["mi_gap"]  # 9 training images < 10 per class: too few for an MI estimate
    assert "\n" not in rep["verdict"] and rep["verdict"].startswith("Too few held-out images (3)")
    assert rep["reference"]["spec"] == tiny[2]  # taken from the manifest


def test_verify_leaves_out_changed_outputs(tiny, tmp_path):
    src, prot, ref = tiny
    work = tmp_path / "prot"
    work.mkdir()
    for p in prot.iterdir():
        if p.is_file():
            (work / p.name).write_bytes(p.read_bytes())
    im = np.asarray(Image.open(work / "crop00.png")).copy()
    im[0, 0] ^= 1
    Image.fromarray(im).save(work / "crop00.png")
    rep = verify_folder(src, work, epochs=1, device="cpu", mi=False, folds=2)
    assert [x["input"] for x in rep["left_out"]] == ["crop00.png"]
    assert "output changed" in rep["left_out"][0]["reason"]
    assert rep["images"] == 11 and rep["split"]["held_out_images"] == 11  # 2 folds: every image tested once


def test_verify_needs_a_manifest(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(UnlearnableError, match="manifest.json not found"):
        verify_folder(tmp_path / "a", tmp_path / "b")


def test_splits_are_stratified_and_disjoint():
    labels = np.array([0] * 10 + [1] * 7 + [2] * 2)
    (one,) = _splits(labels, 0.25, 1, seed=0)
    assert [int(one[labels == c].sum()) for c in range(3)] == [2, 2, 1]  # round(0.25 n), >= 1, < n
    folds = _splits(labels, 0.25, 2, seed=0)
    assert np.array_equal(np.sum(folds, axis=0), np.ones(len(labels)))  # each image tested exactly once
    with pytest.raises(UnlearnableError, match="at least 2"):
        _splits(np.array([0, 0, 1]), 0.25, 1, seed=0)


def _report(clean, prot, n):
    def acc(p):
        return {"acc": p, "se": float(np.sqrt(p * (1 - p) / n)), "n": n, "correct": round(p * n)}
    gap = 100 * (clean - prot)
    se = 100 * float(np.hypot(acc(clean)["se"], acc(prot)["se"]))
    return {"victim": {"model": "cnn", "epochs": 10, "size": 32},
            "results": {"none": {"clean": {"protected_classes": acc(clean)}, "protected": {"protected_classes":
                                 acc(prot)}, "gap_pts": gap, "gap_se_pts": se}}}


def test_verdict_claims_only_what_the_worst_case_supports():
    rep = _report(0.9, 0.2, 200)
    rep["results"]["early-stop"] = _report(0.9, 0.3, 200)["results"]["none"]
    held = verdict(rep)
    assert "suggests the protection works" in held and "early stopping, still got only 30%" in held
    rep["results"]["prior-finetune"] = _report(0.9, 0.85, 200)["results"]["none"]
    broken = verdict(rep)
    assert "no clear effect against that attacker" in broken and "fine-tuning a prior" in broken
    assert "85%" in broken and "suggests" not in broken and "\n" not in broken


def test_verify_without_attackers_keeps_the_filters_only(tiny, tmp_path):
    src, prot, _ = tiny
    from unlearnable.protect.verify import verify_folder
    calls = []
    rep = verify_folder(src, prot, epochs=1, device="cpu", mi=False, attackers=False,
                        on_progress=lambda d, t: calls.append((d, t)))
    assert set(rep["results"]) == {"none", "jpeg20", "grayscale"} and rep["attackers"] == {}
    assert calls == [(0.0, 6)] + [(k, 6) for k in range(1, 7)]  # one call per victim: 3 conditions x 2


def test_verdict_wording_is_modest():
    strong = verdict(_report(0.9, 0.2, 200))
    assert "suggests the protection works" in strong and "not that it stops every model" in strong
    assert "90%" in strong and "20%" in strong
    weak = verdict(_report(0.9, 0.84, 200))
    assert "no clear effect" in weak
    noisy = verdict(_report(0.9, 0.75, 12))  # 15 points, but within two standard errors
    assert "no clear effect" in noisy
    assert verdict(_report(1.0, 0.0, 5)).startswith("Too few held-out images (5)")


def test_a_victim_that_learned_nothing_is_not_counted_as_protection(tiny, monkeypatch):
    """A protected-trained victim that learned nothing scores chance on the held-out images:
    the verdict claims no effect from it and says why; the table marks it. verify_folder
    counts the folds where train_victim flagged a victim."""
    from unlearnable.protect import verify
    rep = _report(0.9, 0.1, 200)
    assert "suggests the protection works" in verdict(rep)
    rep["results"]["none"]["protected"]["did_not_learn_folds"] = 1
    said = verdict(rep)
    assert "no clear effect" in said and "suggests" not in said and "\n" not in said
    assert "a victim did not learn at all with plain training (chance accuracy" in said
    for v in ("clean", "protected"):
        rep["results"]["none"][v]["other_classes"] = None
    rep.update(images=200, classes=["a"], split={"held_out_images": 200}, reference={"spec": "r", "train_images": 0},
               mi_gap={}, verdict=said)
    table = verify.format_report(rep).splitlines()
    assert [line.split()[:2] for line in table if "(victim did not learn: 1 fold(s))" in line] == [["none", "protected"]]
    real = verify.train_victim

    def protected_fails(*a, **k):
        res = real(*a, **k)
        if k["desc"].startswith("protected/"):
            res.extra["did_not_learn"] = "flagged"
        return res

    monkeypatch.setattr(verify, "train_victim", protected_fails)
    src, prot, _ = tiny
    full = verify.verify_folder(src, prot, epochs=1, device="cpu", mi=False, attackers=False)
    assert {c: (r["clean"]["did_not_learn_folds"], r["protected"]["did_not_learn_folds"])
            for c, r in full["results"].items()} == {"none": (0, 1), "jpeg20": (0, 1), "grayscale": (0, 1)}

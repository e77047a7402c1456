"""The attackers of ``compare --defenses`` and the worst case for the protector."""

import json

import numpy as np
import pytest

from conftest import make_learnable
from unlearnable.cli import main
from unlearnable.errors import UnlearnableError
from unlearnable.experiments import compare
from unlearnable.experiments.attackers import DEFAULT_ATTACKERS, parse_attacker, parse_attackers, worst_case


def test_attackers_parse_to_protocols_priors_and_defenses():
    assert parse_attacker("none") == parse_attacker("st") and parse_attacker("none").protocol == "st"
    assert parse_attacker("es").protocol == "st-es" and parse_attacker("es").label == "st-es"
    at = parse_attacker("at-4")
    assert at.protocol == "at" and at.label == "at-4" and dict(at.options)["at_eps"] == pytest.approx(4 / 255)
    assert parse_attacker("finetune").finetune == "full" and parse_attacker("linear-probe").label == "probe"
    assert parse_attacker("probe").finetune == "linear-probe" and parse_attacker("low-lr").finetune == "low-lr"
    j = parse_attacker("JPEG:10, grayscale")
    assert (j.label, j.protocol, j.defenses, j.finetune) == ("jpeg:10,grayscale", "st", "jpeg:10,grayscale", None)
    with pytest.raises(UnlearnableError, match="unknown attacker 'jpg:10'"):
        parse_attacker("jpg:10")
    cf = parse_attacker("Crop-Flip")
    assert (cf.label, cf.protocol, cf.augment, cf.crop_padding, cf.defenses) == ("crop-flip", "st", "crop-flip", None,
                                                                                 "none")
    assert parse_attacker("crop:2").crop_padding == 2 and parse_attacker("crop:2").slug == "crop-2"
    for bad, why in (("flip:2", "flip has no crop padding"), ("crop-flip:0", "positive whole number"),
                     ("crop:x", "positive whole number")):
        with pytest.raises(UnlearnableError, match=why):
            parse_attacker(bad)
    labels = [a.label for a in parse_attackers([])]
    assert labels[0] == "none" and len(labels) == len(DEFAULT_ATTACKERS)
    assert [a.label for a in parse_attackers(["bdr", "none", "bdr"])] == ["none", "bdr:2"]
    assert parse_attacker("grayscale").skipped(1) and parse_attacker("grayscale").skipped(3) is None
    assert parse_attacker("jpeg:10,grayscale").skipped(1) is None


def test_worst_case_is_the_highest_accuracy_named():
    assert worst_case({"none": 0.3, "st-es": 0.6, "jpeg:10": 0.6, "grayscale": None}) == \
        {"attacker": "st-es", "test_acc": 0.6}
    assert worst_case({"grayscale": None}) == {"attacker": None, "test_acc": None}


def test_compare_reports_every_attacker_and_the_worst_case(tmp_path, capsys):
    x, y = make_learnable(400, size=12, seed=3)
    np.savez(tmp_path / "d.npz", x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
    out = tmp_path / "cmp"
    argv = ["-q", "compare", "--data", str(tmp_path / "d.npz"), "--methods", "random", "--subset", "100",
            "--victim-epochs", "1", "--mi-slices", "4", "--estimators", "hist", "--prior-images", "80",
            "--out", str(out), "--defenses", "none", "st-es", "blur:1", "grayscale", "finetune", "probe",
            "crop-flip:2"]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    r = json.loads((out / "results.json").read_text())
    assert r["attackers"] == ["none", "st-es", "blur:1", "grayscale", "finetune", "probe", "crop-flip:2"]
    assert r["skipped"] == {"grayscale": "grey data: grayscale changes nothing"} and r["prior_images"] == 80
    for name in ("clean", "random"):
        w = r["worst_case"][name]
        by = w["by_attacker"]
        assert by["grayscale"] is None and by["none"] == (r["clean"] if name == "clean" else r["attacks"][name])["test_acc"]
        ran = {k: v for k, v in by.items() if v is not None}
        assert w["test_acc"] == max(ran.values()) and by[w["attacker"]] == w["test_acc"]
    cell = json.loads((out / "random" / "attackers" / "probe-prior-80" / "metrics.json").read_text())
    prov = cell["prior"]["provenance"]
    assert cell["prior"]["finetune"] == "linear-probe" and prov["images"] == 80 and prov["subset"] == 80
    cf = json.loads((out / "clean" / "attackers" / "crop-flip-2" / "metrics.json").read_text())
    assert cf["augment"] == {"augment": "crop-flip", "crop_padding": 2}
    assert cf["history"] and cf["test_acc"] == r["worst_case"]["clean"]["by_attacker"]["crop-flip:2"]
    es = json.loads((out / "random" / "attackers" / "st-es" / "metrics.json").read_text())
    assert es["early_stopping"]["test_images"] + es["early_stopping"]["val_images"] == 100
    assert "Worst case for the protector" in printed and "| random " in printed and "grayscale: n/a" in printed
    assert "Worst case for the protector" in (out / "table.md").read_text()
    # a rerun trains nothing: every attacker's victim is cached
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps
    # another prior size is another prior and other prior victims; nothing else retrains
    assert main([*argv[:argv.index("--prior-images") + 1], "60", *argv[argv.index("--prior-images") + 2:]]) == 0
    assert (out / "random" / "attackers" / "finetune-prior-60" / "metrics.json").is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_prior_attackers_need_images_outside_the_subset(tmp_path):
    x, y = make_learnable(200, size=12, seed=3)
    np.savez(tmp_path / "d.npz", x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    with pytest.raises(UnlearnableError, match="need clean training images outside the protected subset"):
        compare.run_compare(tmp_path / "c", data=str(tmp_path / "d.npz"), methods=["random"], subset=None,
                            victim_epochs=1, mi_slices=4, estimators=["hist"], attackers=["probe"])
    assert not (tmp_path / "c").exists()  # refused before any work

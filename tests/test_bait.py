"""BAIT: budget, seeding, resume, the incorrect targets, the binding objective, bad configs, the CLI."""

import numpy as np
import pytest
from conftest import crash_then_resume
import torch

from unlearnable.attacks import attack_names, get_attack
from unlearnable.attacks.bait import TARGET_RULES, incorrect_targets, parse_rules, rule_at
from unlearnable.cli import main
from unlearnable.data import load_dataset, quantize, read_poisoned
from unlearnable.data.dataset import ImageDataset
from unlearnable.data.poisoned import budget_levels
from unlearnable.errors import UnlearnableError
from unlearnable.models import model_names, register_model
from unlearnable.models.cnn import ConvNet4

if "test-cnn-w8" not in model_names():
    register_model("test-cnn-w8")(lambda **kw: ConvNet4(width=8, **kw))

FAST = dict(model="test-cnn-w8", device="cpu", channels_last=False, batch_size=64, lr=0.05, epochs=3, train_steps=2,
            pgd_steps=2, step_size=2 / 255, crop_padding=2)


def _train(tiny_npz):
    return load_dataset(tiny_npz).train


def test_registered_with_presets():
    assert "bait" in attack_names()
    cls = get_attack("bait")
    assert {"cpu", "paper"} <= set(cls.presets)
    paper = cls.from_preset("paper").config
    assert (paper.model, paper.epochs, paper.train_steps, paper.batch_size, paper.lr, paper.pgd_steps) == \
        ("resnet-18", 90, 1, 512, 0.1, 1)
    assert paper.eps == 8 / 255 and paper.targets == "hard,random,far" and paper.init == "zero"
    cls.from_preset("cpu")  # validates


def test_budget_and_pixel_range_and_one_pattern_per_class(tiny_npz):
    train = _train(tiny_npz)
    attack = get_attack("bait")(**FAST)
    res = attack.generate(train, seed=0)
    d = res.delta
    assert d.shape == (len(train), 1, 16, 16) and d.dtype == torch.float32
    assert torch.isfinite(d).all() and 0 < d.abs().max() <= attack.config.eps + 1e-6
    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    assert (x + d).min() >= -1e-6 and (x + d).max() <= 1 + 1e-6
    # Class-wise: where no pixel-range clipping happens, every image of a class gets the same pattern.
    inside = ((x > 8 / 255) & (x < 1 - 8 / 255))
    for k in range(train.num_classes):
        rows = torch.from_numpy(train.labels == k)
        ref = d[rows][0]
        both = inside[rows] & inside[rows][:1]
        assert torch.allclose(d[rows][both], ref.expand_as(d[rows])[both], atol=1e-6)
    assert len(res.info["history"]) == 3 and [h["targets"] for h in res.info["history"]] == ["hard", "random", "far"]


def test_same_seed_bit_identical_other_seed_differs(tiny_npz):
    train = _train(tiny_npz)
    a = get_attack("bait")(**FAST).generate(train, seed=0).delta
    b = get_attack("bait")(**FAST).generate(train, seed=0).delta
    c = get_attack("bait")(**FAST).generate(train, seed=1).delta
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_resume_after_crash_is_bit_identical(tiny_npz, tmp_path, monkeypatch):
    train = _train(tiny_npz)
    full, resumed = crash_then_resume(lambda: get_attack("bait")(**FAST), train, tmp_path, monkeypatch)
    assert resumed.info["resumed_from_epoch"] == 2 and len(resumed.info["history"]) == 3
    assert torch.equal(resumed.delta, full.delta)
    with pytest.raises(UnlearnableError, match="checkpoint was made with other"):
        get_attack("bait")(**FAST).generate(train, seed=3, workdir=tmp_path, resume=True)


def test_binding_objective_is_lowered(tiny_npz):
    """The outer objective, CE of the source model towards the incorrect targets, is lower
    with the generated perturbations than with none (same model, images and targets)."""
    train = _train(tiny_npz)
    # A source model that learns the task (8 batches per round) and a budget that can compete
    # with the tiny task's bright bands; the fixed derangement y -> y + 1 as targets.
    over = dict(FAST, epochs=2, train_steps=8, lr=0.1, targets="next", eps=32 / 255, step_size=8 / 255, pgd_steps=3)
    hist = get_attack("bait")(**over).generate(train, seed=0).info["history"]
    for h in hist:
        assert h["binding_ce"] < h["binding_ce_zero"], hist
    assert hist[-1]["binding_ce"] < 0.5 * hist[-1]["binding_ce_zero"], hist


@pytest.mark.parametrize("rule", TARGET_RULES)
def test_targets_never_the_true_class(rule):
    gen = torch.Generator().manual_seed(0)
    for k in (2, 3, 10):
        y = torch.arange(200) % k
        logits = torch.randn(200, k, generator=gen)
        logits[torch.arange(200), y] += 5.0  # the true class is the most likely ...
        low = logits.clone()
        low[torch.arange(200), y] -= 20.0  # ... or the least likely one
        for lg in (logits, low):
            t = incorrect_targets(rule, y, k, lg, gen)
            assert t.dtype == torch.long and ((t >= 0) & (t < k)).all()
            assert (t != y).all(), (rule, k)
    y = torch.tensor([0, 1, 2])
    lg = torch.tensor([[9.0, 1.0, 5.0, 0.0], [3.0, 9.0, 2.0, 1.0], [1.0, 0.0, 9.0, 8.0]])
    if rule == "hard":
        assert incorrect_targets(rule, y, 4, lg).tolist() == [2, 0, 3]
    elif rule == "far":
        assert incorrect_targets(rule, y, 4, lg).tolist() == [3, 3, 1]
    elif rule == "next":
        assert incorrect_targets(rule, y, 4).tolist() == [1, 2, 3]
    else:  # every wrong class is drawn
        t = incorrect_targets(rule, torch.zeros(400, dtype=torch.long), 4, None, gen)
        assert set(t.tolist()) == {1, 2, 3}


def test_stage_schedule():
    rules = parse_rules("hard, random,far")
    assert [rule_at(rules, r, 90) for r in (0, 29, 30, 59, 60, 89)] == ["hard"] * 2 + ["random"] * 2 + ["far"] * 2
    assert [rule_at(rules, r, 4) for r in range(4)] == ["hard", "hard", "random", "far"]
    assert rule_at(("next",), 3, 5) == "next"


@pytest.mark.parametrize("field,value,needle", [
    ("epochs", 0, "epochs"), ("train_steps", 0, "train_steps"), ("pgd_steps", -1, "pgd_steps"),
    ("batch_size", 0, "batch_size"), ("step_size", 0.0, "step_size"), ("lr", -0.1, "lr"),
    ("momentum", 1.0, "momentum"), ("weight_decay", -1e-4, "weight_decay"), ("eps", 0.0, "eps"),
    ("targets", "hard,nearest", "targets"), ("targets", "", "targets"), ("targets", "hard,,far", "targets"),
    ("init", "gauss", "init"), ("train_augment", "rotate", "train_augment"), ("crop_padding", -1, "crop_padding"),
    ("lr", float("nan"), "lr"), ("model", "resnet-9000", "resnet-9000"),
])
def test_bad_config_is_one_line(field, value, needle):
    with pytest.raises(UnlearnableError) as e:
        get_attack("bait")(**{field: value})
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg
    assert "--" not in msg, msg  # names the parameter, not a CLI flag


def test_one_class_is_refused():
    ds = ImageDataset(np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, np.int64), ["a"])
    with pytest.raises(UnlearnableError, match="at least two classes"):
        get_attack("bait")(**FAST).generate(ds, seed=0)


def test_cli_poison_method_bait(tiny_npz, tmp_path, capsys):
    out = tmp_path / "bait"
    code = main(["-q", "poison", "--method", "bait", "--data", str(tiny_npz), "--out", str(out), "--epochs", "2",
                 "--steps", "1", "--batch-size", "64", "--model", "test-cnn-w8", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    back = read_poisoned(out)
    m = back.manifest
    assert m["method"] == "bait" and m["preset"] == "cpu" and m["norm"] == "linf"
    assert 0 < m["linf_255"] <= budget_levels(8 / 255) == 8
    train = _train(tiny_npz)
    attack = get_attack("bait").from_preset("cpu", epochs=2, pgd_steps=1, batch_size=64, model="test-cnn-w8",
                                            device="cpu")
    again = quantize(train.images, attack.generate(train, seed=0).delta, attack.config.eps)
    np.testing.assert_array_equal(again, back.poisoned.images)
    code = main(["-q", "poison", "--method", "bait", "--data", str(tiny_npz), "--out", str(tmp_path / "x"),
                 "--preset", "nope"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert code == 2 and len(err) == 1 and "unknown preset" in err[0]


def test_refused_resume_names_what_differs(tiny_npz, tmp_path, monkeypatch):
    """A checkpoint of another run is refused with the fields that differ, not a guess at which."""
    train = _train(tiny_npz)
    crash_then_resume(lambda: get_attack("bait")(**FAST), train, tmp_path, monkeypatch)
    with pytest.raises(UnlearnableError, match=r"\(epochs: 3 there, 4 now\);"):
        get_attack("bait")(**{**FAST, "epochs": 4}).generate(train, seed=2, workdir=tmp_path, resume=True)
    with pytest.raises(UnlearnableError, match=r"\(seed: 2 there, 3 now\);"):
        get_attack("bait")(**FAST).generate(train, seed=3, workdir=tmp_path, resume=True)
    smaller = train.take(np.arange(len(train) - 1))
    with pytest.raises(UnlearnableError, match=r"\(data: other images or labels"):
        get_attack("bait")(**FAST).generate(smaller, seed=2, workdir=tmp_path, resume=True)

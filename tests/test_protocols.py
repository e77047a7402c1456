"""Training protocols (ST, AT), their composition with defenses, and the train/evaluate CLI."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import make_learnable
from unlearnable.cli import main
from unlearnable.data.dataset import ImageDataset
from unlearnable.defenses import parse_defenses
from unlearnable.errors import UnlearnableError
from unlearnable.models import build_model
from unlearnable.runtime import make_generator
from unlearnable.train import ATConfig, TensorData, get_protocol, protocol_names, robust_accuracy, victim_preset
from unlearnable.train.adversarial import pgd_adversary
from unlearnable.train.standard import preset_name
from unlearnable.experiments.evaluate import build_cells, parse_cell


def tiny(n=440, size=12, channels=1, train=240, seed=1):
    x, y = make_learnable(n, size=size, channels=channels, seed=seed)
    return ImageDataset(x[:train], y[:train], list("abcd")), ImageDataset(x[train:], y[train:], list("abcd"))


def test_registry_and_presets():
    assert {"st", "at"} <= set(protocol_names())
    assert get_protocol("AT") is get_protocol("at")
    with pytest.raises(UnlearnableError, match="unknown protocol"):
        get_protocol("nope")
    p = victim_preset("paper-at")
    assert (p.model, p.epochs, p.lr, p.schedule, tuple(p.milestones), p.gamma, p.weight_decay) == \
        ("resnet-18", 100, 0.1, "step", (40, 80), 0.1, 5e-4)
    assert p.protocol_options == {"at_steps": 10}
    assert preset_name("at") == "cpu-at" and preset_name("st") == "cpu" and preset_name("at", "paper") == "paper-at"
    assert preset_name("st", "paper") == "paper-st" and preset_name("at", "paper-st") == "paper-st"
    at = ATConfig()
    assert at.steps == 10 and abs(at.step - 2 / 255) < 1e-12  # the paper's PGD-10, step 2/255 at 8/255


def test_at_adversary_stays_in_budget_and_raises_the_loss():
    torch.manual_seed(0)
    model = build_model("cnn-small", 1, 4, 12).train()
    x, y = torch.rand(32, 1, 12, 12), torch.arange(32) % 4
    for eps in (2, 4, 6, 8):
        cfg = ATConfig(eps=eps / 255, steps=5)
        x_adv = pgd_adversary(cfg, make_generator(0))(model, x, y)
        assert model.training and all(p.grad is None for p in model.parameters())
        assert (x_adv - x).abs().max() <= eps / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        model.eval()
        with torch.no_grad():
            assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
        model.train()
    soft = F.one_hot(y, 4).float() * 0.7 + 0.075  # soft targets (after Mixup/CutMix) work too
    x_adv = pgd_adversary(ATConfig(eps=4 / 255, steps=2), make_generator(0))(model, x, soft)
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-6


def test_at_improves_robustness():
    train, test = tiny()
    cfg = victim_preset("cpu", model="cnn-small", epochs=3, batch_size=32, lr=0.05, device="cpu")
    st = get_protocol("st")(train, test, cfg, seed=0)
    at = get_protocol("at")(train, test, cfg, seed=0, options={"at_eps": 32 / 255, "at_steps": 2,
                                                               "at_robust_eval": 100})
    attack = ATConfig(eps=32 / 255, steps=5)
    data = TensorData.from_dataset(test, "cpu")
    st_rob, at_rob = robust_accuracy(st.model, data, attack), robust_accuracy(at.model, data, attack)
    assert st.test_acc > 0.9 and at.test_acc > 0.9
    assert at_rob > 0.9 and st_rob < 0.7, (st_rob, at_rob)
    info = at.metrics()["at"]
    assert info["eps_255"] == 32 and info["steps"] == 2 and info["robust_test_images"] == 100
    assert at.protocol == "at" and len(at.history) == 3
    assert all({"train_acc", "test_acc", "loss"} <= set(h) for h in at.history)


def test_defenses_compose_with_protocols():
    train, test = tiny(n=200, train=120, channels=3, size=8)
    cfg = victim_preset("cpu-at", model="cnn-small", epochs=1, batch_size=32, device="cpu")
    r = get_protocol("at")(train, test, cfg, seed=0, defenses=parse_defenses("jpeg:10,cutmix:1,grayscale"),
                           options={"at_eps": 4 / 255, "at_robust_eval": 0})
    assert r.defenses == ["jpeg:10", "cutmix:1", "grayscale"] and set(r.extra["defense_seconds"]) == \
        {"jpeg:10", "grayscale"}
    assert r.metrics()["at"]["steps"] == 3  # from the cpu-at preset
    with pytest.raises(UnlearnableError, match="unknown option"):
        get_protocol("at")(train, test, cfg, options={"at_epsilon": 0.1})
    with pytest.raises(UnlearnableError, match="at_eps must be in"):
        get_protocol("at")(train, test, cfg, options={"at_eps": 0})
    with pytest.raises(UnlearnableError, match="takes no options"):
        get_protocol("st")(train, test, cfg, options={"at_eps": 0.1})


def test_cell_syntax():
    c = parse_cell("CNN:at-4:jpeg:10,cutout")
    assert (c.model, c.protocol, dict(c.options), c.defenses) == ("cnn", "at", {"at_eps": 4 / 255}, "jpeg:10,cutout")
    assert c.label == "cnn:at-4:jpeg:10,cutout" and "/" not in c.slug and ":" not in c.slug
    assert parse_cell("cnn:at").label == "cnn:at-8:none" and parse_cell("cnn:st:none").label == "cnn:st:none"
    cells = build_cells(["cnn:st"], ["cnn"], ["st", "at-2"], ["none", "mixup"])
    assert [c.label for c in cells] == ["cnn:st:none", "cnn:st:mixup", "cnn:at-2:none", "cnn:at-2:mixup"]
    assert [c.label for c in build_cells()] == ["cnn:st:none"]


def run(capsys, *argv):
    code = main(["-q", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv, needle", [
    (["train", "--protocol", "nope"], "unknown protocol"),
    (["train", "--at-eps", "4"], "--at-eps only apply to --protocol at"),
    (["train", "--defense", "jpeg:abc"], "an integer"),
    (["train", "--defense", "nope"], "unknown defense"),
    (["train", "--model", "vgg-1000"], "unknown model"),
    (["train", "--protocol", "at-0"], "AT budget"),
    (["evaluate", "--cells", "cnn"], "bad cell"),
    (["evaluate", "--cells", "cnn:xx"], "unknown protocol"),
    (["evaluate", "--cells", "cnn:st", "--clean"], "--clean without a value needs a protected dataset"),
    (["evaluate", "--cells", "cnn:st", "--preset", "nope"], "unknown victim preset"),
])
def test_cli_bad_inputs_are_one_line_errors(capsys, tiny_npz, tmp_path, argv, needle):
    code, _, err = run(capsys, *argv, "--data", str(tiny_npz), "--out", str(tmp_path / "out"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("unlearnable: error: ") and needle in lines[0], err
    assert not (tmp_path / "out").exists()


def test_cli_train_writes_metrics(capsys, tiny_npz, tmp_path):
    code, out, err = run(capsys, "train", "--data", str(tiny_npz), "--model", "cnn-small", "--protocol", "at",
                         "--at-eps", "4", "--at-steps", "2", "--defense", "cutout,jpeg:10", "--epochs", "2",
                         "--batch-size", "64", "--device", "cpu", "--out", str(tmp_path / "v"))
    assert code == 0, err
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert 0 <= m["test_acc"] <= 1 and 0 <= m["train_acc"] <= 1 and m["protocol"] == "at"
    assert m["defenses"] == ["cutout", "jpeg:10"] and m["model"] == "cnn-small" and m["preset"] == "cpu-at"
    assert m["at"]["eps_255"] == 4 and m["at"]["steps"] == 2 and 0 <= m["at"]["robust_test_acc"] <= 1
    assert [h["epoch"] for h in m["history"]] == [1, 2] and all("train_acc" in h and "test_acc" in h
                                                                  for h in m["history"])
    assert m["config"]["epochs"] == 2 and m["train_images"] == 160
    assert json.loads(out)["test_acc"] == m["test_acc"]
    from unlearnable.models.checkpoint import load_model
    assert load_model(tmp_path / "v")[1]["model"] == "cnn-small"


def test_cli_evaluate_table_and_resume(capsys, tiny_npz, tmp_path):
    code, _, err = run(capsys, "poison", "--method", "random", "--data", str(tiny_npz), "--out", str(tmp_path / "p"))
    assert code == 0, err
    argv = ["evaluate", "--data", str(tmp_path / "p"), "--clean", "--cells", "cnn-small:st", "cnn-small:st:mixup",
            "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--out", str(tmp_path / "ev")]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    table = [line for line in out.splitlines() if line.startswith("|")]
    cols = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    assert cols(table[0]) == ["model", "protocol", "defenses", "random acc", "clean acc", "random best epoch", "gap",
                              "time"] and len(table) == 4
    assert cols(table[3])[:3] == ["cnn-small", "st", "mixup"]
    assert len({len(line) for line in table}) == 1  # padded: the raw text reads as a table
    res = json.loads((tmp_path / "ev" / "evaluate.json").read_text())
    assert [r["cell"] for r in res["rows"]] == ["cnn-small:st:none", "cnn-small:st:mixup"]
    row = res["rows"][1]
    assert set(row["results"]) == {"random", "clean"}
    assert row["gap"] == pytest.approx(row["results"]["clean"]["test_acc"] - row["results"]["random"]["test_acc"])
    files = sorted((tmp_path / "ev" / "cells").rglob("metrics.json"))
    assert len(files) == 4
    stamps = [f.stat().st_mtime_ns for f in files]
    code, out2, _ = run(capsys, *argv)  # resumed: nothing retrained, the same table
    assert code == 0 and [f.stat().st_mtime_ns for f in files] == stamps
    assert [line for line in out2.splitlines() if line.startswith("|")] == table
    code, _, err = run(capsys, *[a if a != "1" else "2" for a in argv])  # other settings, same folder
    assert code == 2 and "made with other data or settings" in err

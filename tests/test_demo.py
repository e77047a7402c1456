import json

import pytest
from conftest import spy_mi_models

from unlearnable.cli import main
from unlearnable.errors import UnlearnableError
from unlearnable.experiments import demo


def test_demo_writes_results_contract(tiny_npz, tmp_path, capsys):
    code = main(["-q", "demo", "--method", "mi-ue", "--data", str(tiny_npz), "--subset", "120", "--epochs", "1",
                 "--steps", "2", "--batch-size", "64", "--victim-epochs", "1", "--device", "cpu", "--out", str(tmp_path / "d")])
    assert code == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "d" / "results.json").read_text())
    for key in ("clean_acc", "poisoned_acc", "seconds"):
        assert key in r
    assert 0 <= r["clean_acc"] <= 1 and 0 <= r["poisoned_acc"] <= 1 and r["seconds"] > 0
    assert r["subset"] == 120 and r["linf_255"] <= 8
    assert set(r["mi"]) == {"hist", "ksg"} and r["mi"]["ksg"]["n_per_class"] == 30
    assert "clean" in out and "mi-ue" in out and "sliced MI" in out
    assert (tmp_path / "d" / "poisoned" / "manifest.json").is_file()
    # the paper's g by default, named on every MI line; the best epoch beside the final one
    assert r["mi_model"] == "victim"
    mi_lines = [x for x in out.splitlines() if x.startswith("sliced MI")]
    assert len(mi_lines) == 2 and all("g = victim trained on each set: clean ref" in x for x in mi_lines)
    for side in ("clean", "poisoned"):
        assert r[f"{side}_best_epoch"] == 1 and r[f"{side}_best_acc"] == r[f"{side}_acc"]  # one epoch
    assert "test acc (final)" in out and "best epoch" in out and "(ep 1)" in out
    # a victim that learned nothing is recorded and marked, not read as protection
    flagged = {side: r[f"{side}_did_not_learn"] for side in ("clean", "poisoned")}
    assert ("(victim did not learn)" in out) == any(flagged.values())
    marked = demo.format_table(dict(r, clean_did_not_learn=None, poisoned_did_not_learn="why")).splitlines()
    assert [line.split("|")[1].strip() for line in marked if "(victim did not learn)" in line] == [
        f"mi-ue (eps 8/255, L-inf written {r['linf_255']}/255)"]


def test_demo_default_method_is_mi_ue_g(tiny_npz, tmp_path, capsys):
    code = main(["-q", "demo", "--data", str(tiny_npz), "--subset", "120", "--epochs", "1", "--batch-size", "64",
                 "--victim-epochs", "1", "--device", "cpu", "--out", str(tmp_path / "d")])
    assert code == 0
    r = json.loads((tmp_path / "d" / "results.json").read_text())
    assert r["method"] == "mi-ue-g" and r["attack_config"]["gen_lr"] > 0 and "mi-ue-g" in capsys.readouterr().out
    # a PGD option means nothing to a generator: one line, exit 2
    assert main(["-q", "demo", "--data", str(tiny_npz), "--steps", "2", "--out", str(tmp_path / "e")]) == 2


@pytest.mark.parametrize("mi_model", ["victim", "clean"])
def test_demo_g_is_the_protected_victim_unless_clean(tiny_npz, tmp_path, monkeypatch, mi_model):
    trained, measured, references = spy_mi_models(monkeypatch, demo)
    r = demo.run_demo(tmp_path / "d", data=str(tiny_npz), subset=120, method="random", victim_epochs=1,
                      mi_model=mi_model)
    g = trained["victim (protected)"] if mi_model == "victim" else trained["victim (clean)"]
    assert len(measured) == 1 and measured[0] is g
    assert references == [trained["victim (clean)"]]  # the reference always comes from the clean victim
    assert json.loads((tmp_path / "d" / "results.json").read_text())["mi_model"] == mi_model
    named = "g = victim trained on each set" if mi_model == "victim" else "g = the clean victim (not the paper's g)"
    assert named in demo.format_table(r)


def test_demo_refuses_unknown_mi_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["-q", "demo", "--mi-model", "poisoned", "--out", str(tmp_path / "d")])
    assert e.value.code == 2 and "--mi-model" in capsys.readouterr().err
    with pytest.raises(UnlearnableError, match="unknown mi_model"):
        demo.run_demo(tmp_path / "d", mi_model="poisoned")
    assert not (tmp_path / "d").exists()

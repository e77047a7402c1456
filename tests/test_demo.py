import json

from unlearnable.cli import main


def test_demo_writes_results_contract(tiny_npz, tmp_path, capsys):
    code = main(["-q", "demo", "--data", str(tiny_npz), "--subset", "120", "--epochs", "1", "--steps", "2",
                 "--batch-size", "64", "--victim-epochs", "1", "--device", "cpu", "--out", str(tmp_path / "d")])
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

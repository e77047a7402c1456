"""bench/seed_spread.py: the crossed (poison seed x victim seed) table and its variance split."""

import json
from pathlib import Path

import pytest
from conftest import load_bench

seed_spread = load_bench("seed_spread")


def test_variance_split_by_hand():
    # groups (1, 3) and (5, 7): grand mean 4, between 2*4 + 2*4 = 16 on 1 df, within 4 x 1 = 4 on 2 df
    out = seed_spread.variance_split({0: {0: 1.0, 10: 3.0}, 1: {1: 5.0, 10: 7.0}, 2: {2: 9.0}})
    assert out["ms_between_poison_seeds"] == pytest.approx(16.0)
    assert out["ms_within_victim_seeds"] == pytest.approx(2.0)
    assert out["share_between"] == pytest.approx(0.8) and out["share_within"] == pytest.approx(0.2)
    assert seed_spread.variance_split({0: {0: 1.0, 10: 3.0}}) == {}  # one poison seed: nothing to split


def _compare(root: Path, seed: int, clean: float, accs: dict) -> Path:
    d = root / f"seed-{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"seed": seed, "clean": {"test_acc": clean},
                                                "attacks": {k: {"test_acc": v} for k, v in accs.items()}}))
    return d


def test_crossed_table_and_summary(tmp_path, capsys):
    root = tmp_path / "seeds"
    d0 = _compare(root, 0, 0.88, {"a": 0.30, "b": 0.50})
    d1 = _compare(root, 1, 0.89, {"a": 0.40, "b": 0.20})
    (root / "seed-2").mkdir()  # still running: no results.json, skipped
    lines = tmp_path / "lines.jsonl"
    lines.write_text("\n".join(json.dumps({"compare_dir": str(d), "seed": 10, "rows": {
        "clean": {"cnn": {"test_acc": 0.87}}, "a": {"cnn": {"test_acc": a}}, "b": {"cnn": {"test_acc": b}}}})
        for d, a, b in ((d0, 0.32, 0.52), (d1, 0.44, 0.10))) + "\n")
    table = seed_spread.crossed_table(root, [json.loads(t) for t in lines.read_text().splitlines()])
    assert table["a"] == {0: {0: 0.30, 10: 0.32}, 1: {1: 0.40, 10: 0.44}}
    assert table["clean"][1] == {1: 0.89, 10: 0.87}
    seed_spread.main([str(root), "--lines", str(lines)])
    out = json.loads(capsys.readouterr().out)
    assert out["rows"]["a"]["n"] == 4 and out["rows"]["a"]["mean"] == pytest.approx(0.365)
    assert out["rows"]["b"]["mean_per_poison_seed"] == {"0": pytest.approx(0.51), "1": pytest.approx(0.15)}
    # pairs (0,0) (0,10): a lowest; (1,1) (1,10): b lowest
    assert out["pairs"] == 4 and out["lowest_in_pairs"] == {"a": 2, "b": 2}
    assert out["lowest_by_poison_seed_mean"] == {"a": 1, "b": 1}
    assert out["rank_by_mean"] == ["b", "a"]  # b: 0.33, a: 0.365
    seed_spread.main([str(root), "--lines", str(lines), "--seeds", "1"])
    assert json.loads(capsys.readouterr().out)["rows"]["a"]["cells"] == {"1": {"1": 0.40, "10": 0.44}}
    with pytest.raises(SystemExit, match="no seed"):
        seed_spread.main([str(tmp_path / "empty"), "--lines", str(lines)])
    other = _compare(tmp_path / "other", 0, 0.5, {"a": 0.9})
    assert seed_spread.crossed_table(other.parent, [json.loads(t) for t in lines.read_text().splitlines()]) == {
        "clean": {0: {0: 0.5}}, "a": {0: {0: 0.9}}}  # lines of another compare folder are left out

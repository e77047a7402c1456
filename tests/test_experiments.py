"""Experiment specs, the runner (cache, resume after kill -9), and the report."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_learnable
from unlearnable.errors import UnlearnableError
from unlearnable.experiments.config import load_spec, parse_spec
from unlearnable.experiments.report import write_report
from unlearnable.experiments.loading import load_data
from unlearnable.experiments.plan import data_dict, plan
from unlearnable.experiments.runner import run_experiment

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"seconds", "task_seconds", "finished_at", "train_seconds", "generate_s", "defense_seconds"}


def _write_tiny(folder: Path, **changes) -> Path:
    """configs/tiny.yaml and its tiny.npz in ``folder`` (with top-level ``changes``)."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = make_learnable(240, seed=1)
    np.savez(folder / "tiny.npz", x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:],
             class_names=np.array(["a", "b", "c", "d"]))
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw.update(changes)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _strip(obj):
    """A record without its timings (they differ between runs)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING and k != "device"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _records(run_dir: Path) -> dict:
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)), "results.jsonl holds a cell twice"
    return {r["key"]: r for r in recs}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole tiny experiment, run once in this process (the reference for other tests)."""
    folder = tmp_path_factory.mktemp("tiny")
    cfg = _write_tiny(folder)
    summary = run_experiment(cfg, folder / "run", echo=lambda s: None)
    return cfg, folder / "run", summary


# -- the spec -------------------------------------------------------------------------------------
BASE = {"data": "tiny.npz", "attacks": ["random"], "victims": ["cnn-small"]}


@pytest.mark.parametrize("change, message", [
    ({"attacks": ["mi-eu"]}, "attacks[0].method: unknown attack 'mi-eu' (did you mean 'mi-ue'?)"),
    ({"attacks": [{"method": "mi-ue", "options": {"epochs": 0}}]}, "epochs must be positive"),
    ({"attacks": [{"method": "mi-ue", "options": {"epochz": 3}}]}, "unknown option(s) ['epochz']"),
    ({"attacks": [{"method": "mi-ue", "ratio": 1.5}]}, "attacks[0].ratio: must be a number in (0, 1]"),
    ({"attacks": ["random", "random"]}, "duplicate attack label 'random'"),
    ({"victims": {"v": {"model": "resnet-19"}}}, "unknown model 'resnet-19' (did you mean 'resnet-18'?)"),
    ({"victims": {"v": {"model": "cnn", "options": {"epochs": -1}}}}, "victim epochs must be positive"),
    ({"evaluate": [{"victims": ["lenet-5"]}]}, "evaluate[0].victims: 'lenet-5' is not defined under victims"),
    ({"evaluate": [{"defenses": ["jpg:10"]}]}, "unknown defense 'jpg' (did you mean 'jpeg'?)"),
    ({"mi": {"estimators": ["hist", "kgs"]}}, "unknown estimator 'kgs' (did you mean 'ksg'?)"),
    ({"mi": {"model": "source"}}, "mi.model: must be 'victim'"),
    ({"seeds": [0, 0]}, "seeds: repeated seed"),
    ({"seeds": ["a"]}, "seeds: expected an integer"),
    ({"poison_seed": "all"}, "poison_seed: must be 'each'"),
    ({"victim": ["cnn"]}, "unknown key 'victim' (did you mean 'victims'?)"),
    ({"data": {"name": "x", "subset": 0}}, "data.subset: must be >= 1"),
    ({"device": "gpu"}, "device: use auto, cpu, cuda or cuda:N"),
])
def test_spec_errors_are_one_line_and_name_the_place(change, message):
    with pytest.raises(UnlearnableError) as e:
        parse_spec({**BASE, **change}, origin="spec.yaml")
    assert message in str(e.value)
    assert str(e.value).startswith("spec.yaml: ") and "\n" not in str(e.value)


def test_spec_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("attacks: [random\n")
    with pytest.raises(UnlearnableError, match=r"bad.yaml: not valid YAML \(line"):
        load_spec(bad)
    with pytest.raises(UnlearnableError, match="config file not found"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(UnlearnableError, match="the file is empty"):
        load_spec(tmp_path / "empty.yaml")


def test_spec_resolves_fractions_defaults_and_the_clean_reference():
    s = parse_spec({**BASE, "attacks": [{"method": "mi-ue", "label": "mi-ue-4", "options": {"eps": "4/255"}}],
                    "protocols": {"at-4": {"name": "at", "options": {"at_eps": "4/255"}}}})
    assert [a.label for a in s.attacks] == ["clean", "mi-ue-4"]
    assert s.attack("mi-ue-4").options["eps"] == pytest.approx(4 / 255)
    assert s.protocols["at-4"].options["at_eps"] == pytest.approx(4 / 255)
    assert s.groups[0].protocols == ("st",) and s.groups[0].defenses == ("none",)
    assert s.report == {"victim": "cnn-small", "protocol": "st", "estimator": "hist"}


# -- the plan and its keys --------------------------------------------------------------------------
def _plan(path, **changes):
    raw = yaml.safe_load(Path(path).read_text())
    raw.update(changes)
    spec = parse_spec(raw, origin=str(path), base_dir=str(Path(path).parent))
    return plan(spec, load_data(data_dict(spec)))


def test_plan_keys_are_stable_and_change_only_with_what_determines_a_cell(tmp_path):
    cfg = _write_tiny(tmp_path)
    a, b = _plan(cfg), _plan(cfg)
    assert [t.key for t in a] == [t.key for t in b]
    assert len({t.key for t in a}) == len(a)
    kinds = lambda ts: {k: {t.key for t in ts if t.kind == k} for k in ("poison", "victim", "mi")}  # noqa: E731
    base = kinds(a)
    # longer victim training: new victim and MI cells, same poisons
    raw = yaml.safe_load(cfg.read_text())
    raw["victims"]["lenet-5"]["options"]["epochs"] = 3
    c = kinds(_plan(cfg, victims=raw["victims"]))
    assert c["poison"] == base["poison"]
    assert c["victim"] != base["victim"] and len(c["victim"] & base["victim"]) == len(base["victim"]) // 2
    # more MI slices: only the MI cells change
    d = kinds(_plan(cfg, mi={**raw["mi"], "slices": 65}))
    assert d["poison"] == base["poison"] and d["victim"] == base["victim"] and not (d["mi"] & base["mi"])
    # the device never enters a key; other data does
    assert {t.key for t in _plan(cfg, device="cpu")} == {t.key for t in a}
    x, y = make_learnable(240, seed=2)
    np.savez(tmp_path / "tiny.npz", x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:])
    assert not ({t.key for t in _plan(cfg)} & {t.key for t in a})


def test_unregistered_capabilities_are_unavailable_not_faked(tiny_run, tmp_path, monkeypatch):
    from unlearnable.attacks import base
    cfg, ref_dir, _ = tiny_run
    monkeypatch.delitem(base._ATTACKS, "ar")  # a known attack that this installation "lacks"
    tasks = _plan(cfg)
    ar = [t for t in tasks if t.cell["attack"] == "ar"]
    reason = "attack 'ar' is not registered in this installation"
    assert ar and all(t.unavailable == reason for t in ar)
    assert all(t.unavailable is None for t in tasks if t.cell["attack"] != "ar")
    # a run skips them (everything else is in the copied cache) and the report says why
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    (run_dir / "results.jsonl").write_text("".join(line + "\n" for line in (run_dir / "results.jsonl").read_text()
                                                   .splitlines() if '"attack":"ar"' not in line))
    shutil.rmtree(run_dir / "artefacts" / "cells")
    s = run_experiment(cfg, run_dir, echo=lambda s: None)
    assert s.unavailable == len(ar) and s.done == 0 and s.failed == []
    assert not any(r["attack"] == "ar" for r in _records(run_dir).values())
    md = (Path(write_report(run_dir, figures=False)["dir"]) / "table1.md").read_text()
    rows = [[c.strip() for c in line.split("|")] for line in md.splitlines() if line.startswith("|")]
    col = rows[0].index("ar")
    assert rows[2][1] == "Test Acc (%)" and rows[2][col] == "unavailable"
    assert f"unavailable: {reason}" in md


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    cfg = _write_tiny(tmp_path)
    lines = []
    s = run_experiment(cfg, tmp_path / "run", dry_run=True, echo=lines.append)
    text = "\n".join(lines)
    assert "estimated time to finish" in text
    rows = {r.split()[0]: r.split()[1:5] for r in text.splitlines()
            if r.split() and r.split()[0] in ("poison", "separability", "victim", "mi", "covariance")}
    assert sum(int(v[0]) for v in rows.values()) == s.total == len(_plan(cfg))
    assert all(v[1] == "0" and v[0] == v[2] and v[3] == "0" for v in rows.values())  # cells, done, to run, unavailable
    assert not (tmp_path / "run").exists()


# -- running, caching, reporting ------------------------------------------------------------------
def test_tiny_run_end_to_end(tiny_run):
    cfg, run_dir, summary = tiny_run
    assert summary.failed == [] and summary.unavailable == 0 and summary.done == summary.total
    recs = _records(run_dir)
    assert len(recs) == summary.total
    kinds = {r["kind"] for r in recs.values()}
    assert kinds == {"poison", "separability", "victim", "mi", "covariance"}
    for r in recs.values():  # every record's artefacts exist
        if r["kind"] == "poison":
            assert (run_dir / "artefacts" / "poison" / r["key"] / "manifest.json").is_file()
            assert r["linf_255"] <= 8
        if r["kind"] == "mi":
            assert (run_dir / "artefacts" / "mi" / f"{r['key']}.npz").is_file()
    # a second run reuses everything
    again = run_experiment(cfg, run_dir, echo=lambda s: None)
    assert again.cached == summary.total and again.done == 0
    assert len(_records(run_dir)) == summary.total


def test_report_tables_and_figures(tiny_run):
    _, run_dir, _ = tiny_run
    res = write_report(run_dir)
    out = Path(res["dir"])
    for name in ("table1.md", "table1.csv", "table3.md", "table13.md", "table21.md", "cells.csv", "fig1.png",
                 "fig2.png", "fig3.png", "fig4.png", "fig6.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for fig in out.glob("*.png"):
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Table 1's numbers are the mean over seeds of the records (and the gap is paired by seed)
    recs = [r for r in _records(run_dir).values() if r["kind"] == "victim" and r["victim"] == "cnn-small"]
    acc = {(r["attack"], r["seed"]): r["test_acc"] for r in recs}
    rows = list(__import__("csv").reader((out / "table1.csv").read_text().splitlines()))
    head, acc_row, gap_row = rows[0], rows[1], rows[2]
    col = head.index("mi-ue")
    assert float(acc_row[col]) == pytest.approx(100 * np.mean([acc["mi-ue", 0], acc["mi-ue", 1]]), abs=1e-3)
    gaps = [acc["clean", s] - acc["mi-ue", s] for s in (0, 1)]
    assert float(gap_row[col]) == pytest.approx(100 * np.mean(gaps), abs=1e-3)
    assert float(gap_row[col + 1]) == pytest.approx(100 * np.std(gaps, ddof=1), abs=1e-3)
    # Spearman between acc gap and MI gap across the three attacks, per estimator, with n
    md = (out / "table1.md").read_text()
    for est in ("hist", "ksg"):
        assert f"Spearman(acc gap, MI gap) [{est}]: " in md
        assert "n = 3" in md.split(f"[{est}]: ")[1].splitlines()[0]
    assert res["data"]["spearman_acc_mi"]["ksg"]["n"] == 3
    # the worst case per training set: the highest mean accuracy over its victim cells, named
    worst = list(__import__("csv").reader((out / "table_worst.csv").read_text().splitlines()))
    by_cell = {}
    for r in _records(run_dir).values():
        if r["kind"] == "victim" and r["attack"] == "mi-ue":
            by_cell.setdefault(f"{r['victim']}:{r['protocol']}:{r['defense']}", []).append(r["test_acc"])
    label = max(by_cell, key=lambda k: np.mean(by_cell[k]))
    names = [r[0] for r in worst[1:]]
    assert names[0] == "clean" and len(names) == len(set(names))  # each training set once
    row = next(r for r in worst[1:] if r[0] == "mi-ue")
    assert row[1] == str(len(by_cell)) and row[7] == label
    assert float(row[4]) == pytest.approx(100 * np.mean(by_cell[label]), abs=1e-3)
    # cells.csv names the seeds whose victim learned nothing, as the records say
    failed = {}
    for r in _records(run_dir).values():
        if r["kind"] == "victim" and r.get("did_not_learn"):
            failed.setdefault((r["attack"], r["victim"], r["protocol"], r["defense"]), []).append(str(r["seed"]))
    cells = list(__import__("csv").DictReader((out / "cells.csv").read_text().splitlines()))
    assert {(c["attack"], c["victim"], c["protocol"], c["defense"]): c["did_not_learn_seeds"].split()
            for c in cells if c["did_not_learn_seeds"]} == {k: sorted(v) for k, v in failed.items()}


def test_kill_9_then_rerun_continues_without_recomputing(tiny_run, tmp_path):
    _, ref_dir, _ = tiny_run
    ref = {k: _strip(r) for k, r in _records(ref_dir).items()}
    # a smaller slice of the same experiment: its cells have the same keys as the reference's
    cfg = _write_tiny(tmp_path, seeds=[0], evaluate=[{"victims": ["cnn-small"]}],
                      mi={"estimators": ["hist"], "slices": 64, "max_per_class": 20})
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "UNLEARNABLE_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "unlearnable.cli", "run", str(cfg), "--out", str(run_dir)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = run_dir / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and results.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = _records(run_dir)
    total = len(_plan(cfg))
    assert 1 <= len(before) < total, "the kill came after the run had finished"
    cell_files = {k: (run_dir / "artefacts" / "cells" / f"{k}.json").stat().st_mtime_ns for k in before}
    poison_dirs = {k: (run_dir / "artefacts" / "poison" / k / "manifest.json").stat().st_mtime_ns
                   for k, r in before.items() if r["kind"] == "poison"}
    s = run_experiment(cfg, run_dir, echo=lambda s: None)
    assert s.failed == [] and s.cached >= len(before) and s.cached + s.done == total
    after = _records(run_dir)
    assert len(after) == total
    for k, r in before.items():  # finished cells untouched
        assert after[k] == r
        assert (run_dir / "artefacts" / "cells" / f"{k}.json").stat().st_mtime_ns == cell_files[k]
    for k, m in poison_dirs.items():
        assert (run_dir / "artefacts" / "poison" / k / "manifest.json").stat().st_mtime_ns == m
    for k, r in after.items():  # and every result equals the uninterrupted run's
        assert _strip(r) == ref[k], r["kind"]


def test_a_line_cut_by_a_kill_is_repaired(tiny_run, tmp_path):
    from unlearnable.experiments.cache import RunStore
    _, ref_dir, _ = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    lines = (run_dir / "results.jsonl").read_bytes().splitlines(keepends=True)
    # the last record's line was half written; its cell file exists (written first)
    (run_dir / "results.jsonl").write_bytes(b"".join(lines[:-1]) + lines[-1][:25])
    recs = RunStore(run_dir).reconcile()
    assert len(recs) == len(lines)
    assert len(_records(run_dir)) == len(lines)


@pytest.mark.slow
def test_workers_on_two_devices_give_the_same_results(tiny_run, tmp_path):
    _, ref_dir, _ = tiny_run
    ref = {k: _strip(r) for k, r in _records(ref_dir).items()}
    cfg = _write_tiny(tmp_path, seeds=[1], evaluate=[{"victims": ["lenet-5"]}])
    s = run_experiment(cfg, tmp_path / "run", devices="cpu,cpu", echo=lambda s: None)
    assert s.failed == [] and s.done == s.total
    for k, r in _records(tmp_path / "run").items():
        assert _strip(r) == ref[k]


def test_shipped_specs_parse_and_paper_lite_plans_its_filters():
    lite = load_spec(ROOT / "configs" / "paper-lite.yaml")
    load_spec(ROOT / "configs" / "paper-cifar10.yaml")
    assert lite.protocols["at-4"].preset == "cpu-at" and lite.poison_seed == "first"
    try:
        data = load_data(data_dict(lite))
    except UnlearnableError:
        pytest.skip("the embedded Fashion-MNIST is not installed")
    tasks = plan(lite, data)
    victims = [t for t in tasks if t.kind == "victim"]
    at = {t.cell["attack"] for t in victims if t.cell["protocol"] == "at-4"}
    assert at == {"clean", "random", "em", "rem", "mi-ue"}
    assert len({t.key for t in tasks if t.kind == "poison"}) == len(lite.attacks) - 1  # one poison per attack
    mine = [t for t in tasks if t.kind == "mi" and t.cell["estimator"] == "mine"]
    assert {t.cell["seed"] for t in mine} == {0} and {t.cell["victim"] for t in mine} == {"cnn"}
    shallow = {t.cell["estimator"] for t in tasks if t.kind == "mi" and t.cell["victim"] == "linear"}
    assert shallow == {"hist"}
    # the AT cells train with the protocol's victim preset (a step schedule), ST cells with the victim's
    from unlearnable.experiments.plan import _victim_config
    assert _victim_config(lite.victims["cnn"], lite.protocols["at-4"])["schedule"] == "step"
    assert _victim_config(lite.victims["cnn"], lite.protocols["st"])["schedule"] == "cosine"


def test_undefined_spearman_is_null_not_nan():
    """A constant column (e.g. 100% linear separability everywhere) has no rank correlation:
    the summary says so with JSON null and a reason instead of writing NaN (not JSON)."""
    from unlearnable.experiments.report import _fmt_rho, _spearman
    const = _spearman([0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0])
    short = _spearman([0.1, float("nan")], [0.3, 0.2])
    assert const["rho"] is None and const["n"] == 4 and "constant" in _fmt_rho(const)
    assert short["rho"] is None and short["n"] == 1 and "fewer than 3" in _fmt_rho(short)
    json.dumps([const, short], allow_nan=False)
    assert _spearman([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 5.0])["rho"] == pytest.approx(1.0)


def test_report_marks_cells_whose_victim_learned_nothing():
    """A victim that learned nothing (chance accuracy) is marked in the accuracy cell and in
    its gap (also when the clean victim is the one that failed), named in a note, and
    listed in cells.csv: a table must not read it as protection."""
    from unlearnable.experiments.report import Table

    class View:
        recs = {"clean": {0: {"test_acc": 0.9}, 1: {"test_acc": 0.1, "did_not_learn": "why"}},
                "a": {0: {"test_acc": 0.1, "did_not_learn": "why"}, 1: {"test_acc": 0.3}}, "b": {0: {"test_acc": 0.5}}}

        def values(self, kind, attack, field, **kw):
            return {s: field(r) for s, r in self.recs[attack].items()}

        def gap(self, kind, attack, field, **kw):
            a, c = self.values(kind, attack, field), self.values(kind, "clean", field)
            return {s: c[s] - a[s] for s in a if s in c}

        def unavailable(self, kind, attack, **kw):
            return None

        def did_not_learn(self, attack, **kw):
            return sorted(s for s, r in self.recs[attack].items() if r.get("did_not_learn"))

    t, kw = Table("t", "", ["x"]), {"victim": "cnn"}
    view = View()
    assert t.fmt(t.acc(view, "a", kw)) == "20.00 ± 14.14 †" and t.fmt(t.acc(view, "b", kw)) == "50.00"
    assert t.fmt(t.acc(view, "b", kw, gap=True)).endswith(" †")  # the clean victim of seed 1 failed
    assert t.notes == ["† the victim did not learn (chance, not protection): a, victim cnn, seed 0",
                       "† the victim did not learn (chance, not protection): clean, victim cnn, seed 1"]
    t.add("row", [t.acc(view, "a", kw)])
    assert "† the victim did not learn" in t.markdown() and "†" not in t.csv()


def test_ratio_table_reads_each_ratio_cell_and_marks_victims_that_learned_nothing(tmp_path):
    """Accuracy against the poisoned fraction: 0 is the clean cell, 1 the plain attack, the
    others the ratio attacks; a victim that learned nothing is marked there too."""
    cfg = _write_tiny(tmp_path, seeds=[0], attacks=["random", {"method": "random", "label": "random-50%", "ratio": 0.5}],
                      evaluate=[{"victims": ["cnn-small"], "protocols": ["st"], "defenses": ["none"]}],
                      mi={"estimators": ["hist"], "slices": 16, "max_per_class": 10}, separability=False)
    run_dir = tmp_path / "run"
    run_experiment(cfg, run_dir, echo=lambda s: None)
    victims = {r["attack"]: r for r in _records(run_dir).values() if r["kind"] == "victim"}
    victims["random-50%"]["did_not_learn"] = "flagged"  # as train_victim records a collapsed victim
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in {**_records(run_dir), **{
        r["key"]: r for r in victims.values()}}.values()))
    out = Path(write_report(run_dir, figures=True)["dir"])
    rows = list(__import__("csv").reader((out / "table_ratio.csv").read_text().splitlines()))
    assert rows[0] == ["attack", "0", "0 std", "0 n", "0.5", "0.5 std", "0.5 n", "1", "1 std", "1 n"]
    assert [float(rows[1][i]) for i in (1, 4, 7)] == pytest.approx(
        [100 * victims[a]["test_acc"] for a in ("clean", "random-50%", "random")], abs=1e-3)
    md = (out / "table_ratio.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| random"))
    assert [c.strip().endswith("†") for c in row.strip("|").split("|")[1:]] == [False, True, False]
    assert "random-50%, victim cnn-small, protocol st, defense none, seed 0" in md
    assert (out / "fig_ratio.png").is_file()

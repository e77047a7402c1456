"""``unlearnable report RUN_DIR``: the paper's tables (Markdown + CSV) and figures (PNG).

Values are mean +- standard deviation over seeds (sample std, ddof 1; no +- with one
seed). Gaps are clean minus attack, computed per seed against the clean cell with the
same victim, protocol, defense and seed, then averaged (so a gap's std is the spread of
paired differences). Gaps are positive when the attack lowers accuracy / MI (the paper's
Table 13 prints them with a minus sign). A cell that cannot run in this installation
shows ``unavailable`` with its reason under the table; one that has not run yet shows ``-``.

Tables (written when the run has the cells they need):

- table1   main victim: test acc, acc gap, MI and MI gap per estimator, per attack;
           Spearman(acc gap, MI gap) across attacks for each estimator, with n
- table3   test acc per victim (transfer)          - table4  adversarial training budgets
- table5   defenses and augmentations              - table13 acc/MI and gaps per victim depth
- table16  one-class (some-class) poisoning         - table20 SimCLR victims (linear probe)
- table21  linear separability of noise and poisoned data, with Spearman against acc gap
- table_ratio  accuracy against the poisoned fraction
- cells.csv    every victim cell, flat

One module on purpose (about 420 lines): one short function per table, all reading the
same records through the same seed aggregation (:class:`Table`), so a reader checks one
aggregation rule for every table.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from ..fsutil import atomic_path, write_json
from .cache import RunStore
from .run_view import PCT, RunView, depth_sorted, mean_std, ratio_kw, ratio_series, test_acc_of
from .markdown import table_lines


class Table:
    """A grid of formatted cells with footnotes; written as Markdown and CSV."""

    def __init__(self, title: str, corner: str, columns: list[str]):
        self.title, self.corner, self.columns = title, corner, columns
        self.rows: list[tuple[str, list]] = []  # (row label, [(mean, std, n, digits[, mark]) | str])
        self.notes: list[str] = []
        self.reasons: dict[str, int] = {}

    def add(self, label: str, cells: list) -> None:
        self.rows.append((label, cells))

    def cell(self, view: RunView, vals: dict, why: str | None, scale: float = 1.0, digits: int = 2):
        m, s, n = mean_std(vals)
        if n == 0:
            if why:
                self.reasons[why] = self.reasons.get(why, 0) + 1
                return "unavailable"
            return "-"
        return (m * scale, s * scale if not math.isnan(s) else math.nan, n, digits)

    def acc(self, view: RunView, attack: str, kw: dict, gap: bool = False):
        """A victim's test accuracy (%) over seeds, or with ``gap`` its paired gap to clean;
        marked with a dagger, and named in a note, when a victim in it learned nothing (its
        accuracy is chance for a reason unrelated to the data, not protection)."""
        c = self.cell(view, (view.gap if gap else view.values)("victim", attack, test_acc_of, **kw),
                      view.unavailable("victim", attack, **kw), PCT)
        failed = [(a, s) for a in dict.fromkeys([attack] + (["clean"] if gap else []))
                  for s in view.did_not_learn(a, **kw)]
        if not failed or isinstance(c, str):
            return c
        where = ", ".join(f"{k} {v}" for k, v in kw.items())
        for a, s in failed:
            note = f"† the victim did not learn (chance, not protection): {a}, {where}, seed {s}"
            if note not in self.notes:
                self.notes.append(note)
        return (*c, " †")

    @staticmethod
    def fmt(c) -> str:
        if isinstance(c, str):
            return c
        m, s, n, digits, *mark = c
        return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if not math.isnan(s) else "") + "".join(mark)

    def empty(self) -> bool:
        return all(all(isinstance(c, str) and c in ("-", "unavailable") for c in cells) for _, cells in self.rows)

    def markdown(self) -> str:
        head = [self.corner] + self.columns
        rows = [[label] + [self.fmt(c) for c in cells] for label, cells in self.rows]
        out = [f"### {self.title}", "", *table_lines(head, rows)]
        notes = list(self.notes) + [f"unavailable: {r} ({n} cells)" for r, n in self.reasons.items()]
        if notes:
            out += [""] + [f"- {n}" for n in notes]
        return "\n".join(out) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        head = [self.corner]
        for c in self.columns:
            head += [c, f"{c} std", f"{c} n"]
        w.writerow(head)
        for label, cells in self.rows:
            row = [label]
            for c in cells:
                if isinstance(c, str):
                    row += [c, "", ""]
                else:
                    m, s, n, digits = c[:4]
                    row += [round(m, digits + 2), "" if math.isnan(s) else round(s, digits + 2), n]
            w.writerow(row)
        return buf.getvalue()


def _spearman(xs: list, ys: list) -> dict:
    """Spearman's rho over the pairs without NaN; rho and p are None (JSON null, with the
    reason) when it is undefined: fewer than 3 pairs, or one side constant (measure.spearman)."""
    from ..measure import spearman
    pairs = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
    if len(pairs) < 3:
        return {"rho": None, "p_value": None, "n": len(pairs), "undefined": "fewer than 3 results"}
    x, y = zip(*pairs)
    return spearman(list(x), list(y))


def _fmt_rho(r: dict) -> str:
    if r["rho"] is None:
        return f"n/a, {r['undefined']} (n = {r['n']})"
    return f"{r['rho']:.4f} (p = {r['p_value']:.3g}, n = {r['n']})"


# -- the tables --------------------------------------------------------------------------------
def table1(view: RunView, summary: dict) -> Table:
    v, p = view.main["victim"], view.main["protocol"]
    kw = {"victim": v, "protocol": p, "defense": "none"}
    t = Table(f"Table 1: test accuracy (%) and MI for victim {v} ({p}), per attack", "", ["clean"] + view.plain[1:])
    row = []
    for a in view.plain:
        row.append(t.acc(view, a, kw))
    t.add("Test Acc (%)", row)
    t.add("Acc Gap (%)", ["-"] + [t.acc(view, a, kw, gap=True) for a in view.plain[1:]])
    spear = {}
    acc_gaps = [mean_std(view.gap("victim", a, test_acc_of, **kw))[0] for a in view.plain[1:]]
    for est in view.estimators:
        ek = {**kw, "estimator": est}
        t.add(f"MI [{est}]", [t.cell(view, view.values("mi", a, "mean", **ek), view.unavailable("mi", a, **ek), 1, 4)
                              for a in view.plain])
        t.add(f"MI Gap [{est}]", ["-"] + [t.cell(view, view.gap("mi", a, "mean", **ek), view.unavailable("mi", a, **ek),
                                                 1, 4) for a in view.plain[1:]])
        mi_gaps = [mean_std(view.gap("mi", a, "mean", **ek))[0] for a in view.plain[1:]]
        spear[est] = _spearman(acc_gaps, mi_gaps)
        t.notes.append(f"Spearman(acc gap, MI gap) [{est}]: {_fmt_rho(spear[est])}")
    if view.estimators:
        mi = view.plan["mi"]
        t.notes.append(f"MI: sliced, {'class-conditional' if mi['conditional'] else 'pooled'}, g = "
                       f"{'the victim of each cell' if mi['model'] == 'victim' else 'the clean victim'}, at most "
                       f"{mi['max_per_class']} images per class, slices {mi['slices']}, nats")
    t.notes.append(f"mean ± std over seeds {view.seeds}; gaps are clean minus attack, paired by seed")
    summary["spearman_acc_mi"] = spear
    return t


def _grid(view, title, rows, cols, getter, corner="") -> Table:
    """Victim test accuracy (%) in a grid; ``getter(row, col) -> (attack, slot coordinates)``.
    Cells that were never planned are blank, and rows or columns with nothing planned are dropped."""
    grid = []
    for _, rkw in rows:
        line = []
        for _, ckw in cols:
            attack, kw = getter(rkw, ckw)
            line.append((attack, kw) if view.planned("victim", attack, **kw) else None)
        grid.append(line)
    keep_r = [i for i, line in enumerate(grid) if any(c is not None for c in line)]
    keep_c = [j for j in range(len(cols)) if any(grid[i][j] is not None for i in keep_r)]
    t = Table(title, corner, [cols[j][0] for j in keep_c])
    for i in keep_r:
        cells = []
        for j in keep_c:
            if grid[i][j] is None:
                cells.append("")
                continue
            attack, kw = grid[i][j]
            cells.append(t.acc(view, attack, kw))
        t.add(rows[i][0], cells)
    return t


def table3(view: RunView) -> Table | None:
    p = view.main["protocol"]
    vs = [v for v in depth_sorted(view, view.victims) if view.planned("victim", "clean", victim=v, protocol=p,
                                                                       defense="none")][::-1]
    if len(vs) < 2:
        return None

    def get(rkw, ckw):
        return ckw, {"victim": rkw, "protocol": p, "defense": "none"}
    return _grid(view, f"Table 3: test accuracy (%) across victims ({p}; deepest first)", [(v, v) for v in vs],
                 [(a, a) for a in view.plain], get, "victim")


def _at_protocols(view) -> list[str]:
    at = [k for k, p in view.protocols.items() if p["name"] == "at"]
    return sorted(at, key=lambda k: -float(view.protocols[k]["options"].get("at_eps", 0) or 0))


def table4(view: RunView) -> Table | None:
    v = view.main["victim"]
    cols = [k for k in _at_protocols(view) if view.planned("victim", "clean", victim=v, protocol=k, defense="none")]
    if not cols:
        return None
    cols += [k for k in ("st",) if view.planned("victim", "clean", victim=v, protocol=k, defense="none")]

    def get(rkw, ckw):
        return rkw, {"victim": v, "protocol": ckw, "defense": "none"}
    return _grid(view, f"Table 4: test accuracy (%) under adversarial training, victim {v}",
                 [(a, a) for a in view.plain], [(c, c) for c in cols], get, "attack")


def table5(view: RunView) -> Table | None:
    v, p = view.main["victim"], view.main["protocol"]
    cols = []
    for k, proto in view.protocols.items():
        if proto["name"] not in ("st", "at", "simclr") and view.planned("victim", "clean", victim=v, protocol=k,
                                                                         defense="none"):
            cols.append((k, {"protocol": k, "defense": "none"}))
    defenses = dict.fromkeys(t["cell"]["defense"] for t in view.tasks if t["kind"] == "victim"
                             and t["cell"]["victim"] == v and t["cell"]["protocol"] == p
                             and t["cell"]["defense"] != "none")
    cols += [(d, {"protocol": p, "defense": d}) for d in defenses]
    if not cols:
        return None

    def get(rkw, ckw):
        return rkw, {"victim": v, **ckw}
    return _grid(view, f"Table 5: test accuracy (%) under defenses, victim {v}", [(a, a) for a in view.plain], cols,
                 get, "attack")


def table_worst(view: RunView) -> Table | None:
    """The worst case for the protector: per training set, the highest mean test accuracy
    any finished victim cell (victim x protocol x defense) reaches, and which cell it is.
    Only when some training set has two or more victim cells."""
    rows = []
    for a in view.plain:  # "clean" first: the plan always holds the clean reference
        cells = {}
        for (kind, attack, victim, protocol, defense, _), slot in view.by_coord.items():
            if kind == "victim" and attack == a and slot["seeds"]:
                m, _, _ = mean_std(view.values("victim", a, test_acc_of, victim=victim, protocol=protocol, defense=defense))
                if not math.isnan(m):
                    cells[f"{victim}:{protocol}:{defense}"] = (victim, protocol, defense, m)
        if cells:
            rows.append((a, cells))
    if not rows or max(len(c) for _, c in rows) < 2:
        return None
    t = Table("Worst case for the protector: the highest test accuracy (%) any victim cell reaches", "training data",
              ["cells", "worst case", "victim:protocol:defense"])
    for a, cells in rows:
        label = max(cells, key=lambda k: cells[k][3])  # the first planned on ties
        victim, protocol, defense, _ = cells[label]
        t.add(a, [str(len(cells)), t.acc(view, a, {"victim": victim, "protocol": protocol, "defense": defense}), label])
    t.notes.append("mean over seeds per cell; the cell with the highest mean is named")
    return t


def table13(view: RunView) -> Table | None:
    p, est = view.main["protocol"], view.main["estimator"]
    vs = [v for v in depth_sorted(view, view.victims) if view.planned("victim", "clean", victim=v, protocol=p,
                                                                       defense="none")]
    if len(vs) < 2:
        return None
    t = Table(f"Table 13: accuracy (%) and MI [{est}] by victim depth ({p})", "", vs)
    for a in view.plain:
        kws = [{"victim": v, "protocol": p, "defense": "none"} for v in vs]
        t.add(f"{a} Acc (%)", [t.acc(view, a, kw) for kw in kws])
        if a != "clean":
            t.add(f"{a} Acc Gap (%)", [t.acc(view, a, kw, gap=True) for kw in kws])
        if est in view.estimators:
            t.add(f"{a} MI", [t.cell(view, view.values("mi", a, "mean", **kw, estimator=est),
                                     view.unavailable("mi", a, **kw, estimator=est), 1, 4) for kw in kws])
            if a != "clean":
                t.add(f"{a} MI Gap", [t.cell(view, view.gap("mi", a, "mean", **kw, estimator=est),
                                             view.unavailable("mi", a, **kw, estimator=est), 1, 4) for kw in kws])
    return t


def table21(view: RunView, summary: dict) -> Table | None:
    if not any(t["kind"] == "separability" for t in view.tasks):
        return None
    t = Table("Table 21: training accuracy (%) of a linear classifier on the noise and on the poisoned data", "",
              ["Unlearnable Noises", "Unlearnable Datasets"])
    clean_vals = {}
    for a in view.plain[1:]:
        clean_vals.update(view.values("separability", a, "clean_train_acc"))
    t.add("clean", ["-", t.cell(view, clean_vals, None, PCT)])
    noise, dset = [], []
    kw = {"victim": view.main["victim"], "protocol": view.main["protocol"], "defense": "none"}
    gaps = []
    for a in view.plain[1:]:
        why = view.unavailable("separability", a)
        nv, dv = view.values("separability", a, "noise_train_acc"), view.values("separability", a, "poisoned_train_acc")
        t.add(a, [t.cell(view, nv, why, PCT), t.cell(view, dv, why, PCT)])
        noise.append(mean_std(nv)[0])
        dset.append(mean_std(dv)[0])
        gaps.append(mean_std(view.gap("victim", a, test_acc_of, **kw))[0])
    summary["spearman_acc_separability"] = {"noise": _spearman(gaps, noise), "dataset": _spearman(gaps, dset)}
    t.notes.append(f"Spearman(acc gap of {kw['victim']}, noise train acc): "
                   f"{_fmt_rho(summary['spearman_acc_separability']['noise'])}")
    t.notes.append(f"Spearman(acc gap of {kw['victim']}, poisoned-data train acc): "
                   f"{_fmt_rho(summary['spearman_acc_separability']['dataset'])}")
    t.notes.append("logistic regression, L-BFGS, no augmentation, on the whole protected training subset")
    return t


def table16(view: RunView) -> Table | None:
    oc = [a for a in view.attacks if a.get("classes")]
    if not oc:
        return None
    v, p = view.main["victim"], view.main["protocol"]
    kw = {"victim": v, "protocol": p, "defense": "none"}
    t = Table(f"Table 16: one-class poisoning, test accuracy (%) on the protected and the other classes, victim {v}",
              "attack", ["classes", "protected classes", "other classes", "clean victim: protected",
                         "clean victim: other"])
    counts = np.asarray(view.plan["data"].get("test_class_counts") or [], dtype=np.float64)

    def clean_split(classes, protected: bool):
        out = {}
        for seed, rec in view.slot("victim", "clean", **kw)["seeds"].items() if view.slot("victim", "clean", **kw) else []:
            pc = np.nan_to_num(np.asarray(rec.get("test_acc_per_class") or [], dtype=np.float64))
            if pc.size == 0 or counts.size != pc.size:
                continue
            mask = np.zeros(pc.size, dtype=bool)
            mask[list(classes)] = True
            sel = mask if protected else ~mask
            out[seed] = float((pc * counts)[sel].sum() / max(1.0, counts[sel].sum()))
        return out
    for a in oc:
        why = view.unavailable("victim", a["label"], **kw)
        t.add(a["label"], [",".join(str(c) for c in a["classes"]),
                           t.cell(view, view.values("victim", a["label"], "test_acc_protected_classes", **kw), why, PCT),
                           t.cell(view, view.values("victim", a["label"], "test_acc_other_classes", **kw), why, PCT),
                           t.cell(view, clean_split(a["classes"], True), None, PCT),
                           t.cell(view, clean_split(a["classes"], False), None, PCT)])
    return t


def table20(view: RunView) -> Table | None:
    v = view.main["victim"]
    cols = [k for k, p in view.protocols.items() if p["name"] == "simclr"
            and view.planned("victim", "clean", victim=v, protocol=k, defense="none")]
    if not cols:
        return None

    def get(rkw, ckw):
        return ckw, {"victim": v, "protocol": rkw, "defense": "none"}
    return _grid(view, f"Table 20: SimCLR victims, linear-probe test accuracy (%), backbone {v}",
                 [(c, c) for c in cols], [(a, a) for a in view.plain], get, "protocol")


def table_ratio(view: RunView) -> Table | None:
    series = ratio_series(view)
    if not series:
        return None
    ratios = sorted({r for s in series.values() for r, _ in s})
    t = Table(f"Accuracy (%) against the poisoned fraction, victim {view.main['victim']}", "attack",
              [f"{r:g}" for r in ratios])
    kw = ratio_kw(view)
    for name, s in series.items():
        d = dict(s)
        t.add(name, [t.acc(view, d[r], kw) if r in d else "-" for r in ratios])
    return t


def cells_csv(view: RunView) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["attack", "victim", "protocol", "defense", "seeds", "test_acc", "test_acc_std", "acc_gap", "acc_gap_std"]
    for est in view.estimators:
        head += [f"mi_{est}", f"mi_{est}_std", f"mi_gap_{est}", f"mi_gap_{est}_std"]
    head += ["unavailable", "did_not_learn_seeds"]
    w.writerow(head)
    coords = dict.fromkeys((t["cell"]["attack"], t["cell"]["victim"], t["cell"]["protocol"], t["cell"]["defense"])
                           for t in view.tasks if t["kind"] == "victim")
    r4 = lambda x: "" if math.isnan(x) else round(x, 6)  # noqa: E731
    for a, v, p, d in coords:
        kw = {"victim": v, "protocol": p, "defense": d}
        m, s, n = mean_std(view.values("victim", a, test_acc_of, **kw))
        gm, gs, _ = mean_std(view.gap("victim", a, test_acc_of, **kw)) if a != "clean" else (math.nan, math.nan, 0)
        row = [a, v, p, d, n, r4(m), r4(s), r4(gm), r4(gs)]
        for est in view.estimators:
            mm, ms, _ = mean_std(view.values("mi", a, "mean", **kw, estimator=est))
            gm2, gs2, _ = mean_std(view.gap("mi", a, "mean", **kw, estimator=est)) if a != "clean" else (math.nan,) * 3
            row += [r4(mm), r4(ms), r4(gm2), r4(gs2)]
        row += [view.unavailable("victim", a, **kw) or "", " ".join(map(str, view.did_not_learn(a, **kw)))]
        w.writerow(row)
    return buf.getvalue()


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_report(run_dir, *, figures: bool = True, main: dict | None = None) -> dict:
    """Write RUN_DIR/report/: tables as .md and .csv, figures as .png, summary.json.

    ``main`` overrides the spec's ``report`` settings (victim, protocol, estimator)."""
    view = RunView(run_dir, main)
    out = Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"run_dir": str(run_dir), "finished_cells": len([t for t in view.tasks
                                                                    if t["key"] in view.results]),
                     "planned_cells": len(view.tasks)}
    tables = {"table1": table1(view, summary), "table3": table3(view), "table4": table4(view),
              "table5": table5(view), "table13": table13(view), "table16": table16(view),
              "table20": table20(view), "table21": table21(view, summary), "table_ratio": table_ratio(view),
              "table_worst": table_worst(view)}
    files = []
    for name, t in tables.items():
        if t is None:
            continue
        _write(out / f"{name}.md", t.markdown())
        _write(out / f"{name}.csv", t.csv())
        files += [f"{name}.md", f"{name}.csv"]
    _write(out / "cells.csv", cells_csv(view))
    files.append("cells.csv")
    if figures:
        from .figures import write_figures
        files += write_figures(view, out)
    write_json(out / "summary.json", summary)
    files.append("summary.json")
    text = tables["table1"].markdown()
    return {"dir": str(out), "files": files, "summary": text.rstrip(), "data": summary}


def load_records(run_dir) -> list[dict]:
    """All finished records of a run directory (for scripts and notebooks)."""
    return list(RunStore(run_dir).load_results().values())


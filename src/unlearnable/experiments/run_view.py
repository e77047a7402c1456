"""A run directory's planned cells and finished results, indexed for the report's tables and
figures (:mod:`.report`, :mod:`.figures`)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import UnlearnableError
from .cache import RunStore
from ..models import model_key
from .config import DEPTH_ORDER

PCT = 100.0


class RunView:
    """The planned cells and finished results of a run directory, indexed for tables."""

    def __init__(self, run_dir, main: dict | None = None):
        self.store = RunStore(run_dir)
        self.plan = self.store.read_plan()
        for k, v in (main or {}).items():
            known = {"victim": self.plan["victims"], "protocol": self.plan["protocols"],
                     "estimator": self.plan["mi"]["estimators"]}[k]
            if v not in known:
                raise UnlearnableError(f"--{k} {v!r} is not in this run; choose from {', '.join(known)}")
            self.plan["report"][k] = v
        self.results = self.store.load_results()
        self.tasks = self.plan["tasks"]
        self.attacks = [a for a in self.plan["attacks"]]
        self.labels = [a["label"] for a in self.attacks]
        self.plain = [a["label"] for a in self.attacks if not a.get("classes") and a.get("ratio") is None]
        self.victims = self.plan["victims"]
        self.protocols = self.plan["protocols"]
        self.seeds = self.plan["seeds"]
        self.main = self.plan["report"]
        self.estimators = list(self.plan["mi"]["estimators"])
        self.reasons: dict[str, str] = {}
        self.by_coord: dict[tuple, dict] = {}
        for t in self.tasks:
            c = t["cell"]
            coord = (t["kind"], c.get("attack"), c.get("victim"), c.get("protocol"), c.get("defense"),
                     c.get("estimator"))
            slot = self.by_coord.setdefault(coord, {"seeds": {}, "unavailable": None})
            if t["unavailable"]:
                slot["unavailable"] = t["unavailable"]
            elif t["key"] in self.results:
                slot["seeds"][c["seed"]] = self.results[t["key"]]

    # -- lookups -----------------------------------------------------------------------------
    def slot(self, kind, attack, victim=None, protocol=None, defense=None, estimator=None) -> dict | None:
        return self.by_coord.get((kind, attack, victim, protocol, defense, estimator))

    def planned(self, kind, attack, **kw) -> bool:
        return self.slot(kind, attack, **kw) is not None

    def values(self, kind, attack, field, **kw) -> dict:
        """seed -> value of ``field`` (a key or a function of the record) for finished cells."""
        s = self.slot(kind, attack, **kw)
        if s is None:
            return {}
        get = field if callable(field) else (lambda r: r.get(field))
        out = {}
        for seed, rec in s["seeds"].items():
            v = get(rec)
            if v is not None:
                out[seed] = float(v)
        return out

    def did_not_learn(self, attack, **kw) -> list:
        """The seeds whose victim in this cell learned nothing (train.standard.did_not_learn)."""
        s = self.slot("victim", attack, **kw)
        return sorted(seed for seed, rec in s["seeds"].items() if rec.get("did_not_learn")) if s else []

    def unavailable(self, kind, attack, **kw) -> str | None:
        s = self.slot(kind, attack, **kw)
        return s["unavailable"] if s else None

    def gap(self, kind, attack, field, **kw) -> dict:
        """seed -> clean value - attack value (paired by seed)."""
        a, c = self.values(kind, attack, field, **kw), self.values(kind, "clean", field, **kw)
        return {s: c[s] - a[s] for s in a if s in c}


def mean_std(vals) -> tuple[float, float, int]:
    v = np.asarray(list(vals.values()) if isinstance(vals, dict) else list(vals), dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)



def test_acc_of(rec):
    return rec.get("test_acc")


def depth_sorted(view: RunView, victims) -> list[str]:
    rank = {m: i for i, m in enumerate(DEPTH_ORDER)}
    return sorted(victims, key=lambda v: (rank.get(model_key(view.victims[v]["model"]), len(rank)),
                                          list(view.victims).index(v)))


def ratio_kw(view: RunView) -> dict:
    """The cell coordinates of the poison-ratio series: the main victim and protocol, no defense."""
    return {"victim": view.main["victim"], "protocol": view.main["protocol"], "defense": "none"}


def ratio_series(view: RunView) -> dict:
    """method label -> [(ratio, attack label of the cell)], with 0 = clean and 1 = the plain
    attack; the cells are at :func:`ratio_kw`."""
    series: dict = {}
    for a in view.attacks:
        if a.get("ratio") is None:
            continue
        base = next((b for b in view.attacks if b["method"] == a["method"] and b.get("ratio") is None
                     and not b.get("classes") and b["options"] == a["options"] and b["preset"] == a["preset"]), None)
        name = base["label"] if base else a["method"]
        s = series.setdefault(name, {0.0: "clean"})
        if base:
            s[1.0] = base["label"]
        s[float(a["ratio"])] = a["label"]
    return {k: sorted(v.items()) for k, v in series.items()}

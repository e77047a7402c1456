"""The plan of an experiment spec: every cell (task) in a valid execution order, with its
content key, dependencies and, for what this installation cannot run, the reason; and the
plan as text (``unlearnable run --dry-run``)."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import RunStore, content_key
from .config import Spec
from .loading import Data

KINDS = ("poison", "separability", "victim", "mi", "covariance")


@dataclass
class Task:
    key: str
    kind: str
    cell: dict  # coordinates shown to people: attack, victim, protocol, defense, seed, estimator
    deps: tuple = ()
    params: dict = field(default_factory=dict)  # what the executor needs (plain JSON)
    unavailable: str | None = None
    save_model: bool = False
    estimate_s: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        c = self.cell
        parts = [c.get("attack")] + [c[k] for k in ("victim", "protocol", "defense") if k in c]
        if "estimator" in c:
            parts.append(c["estimator"])
        return f"{self.kind} {' / '.join(str(p) for p in parts)} / seed {c['seed']}"


# -- resolved configurations (what enters the keys) -------------------------------------------
def _attack_config(a) -> tuple[dict | None, str | None]:
    from ..attacks import attack_names, get_attack
    if a.method not in attack_names():
        return None, f"attack {a.method!r} is not registered in this installation"
    params = inspect.signature(__import__("unlearnable.poison", fromlist=["poison_dataset"]).poison_dataset).parameters
    for opt in ("classes", "ratio"):
        if getattr(a, opt) is not None and opt not in params:
            return None, f"{opt} (partial poisoning) is not supported by poison_dataset in this installation"
    cfg = dataclasses.asdict(get_attack(a.method).from_preset(a.preset, **a.options).config)
    cfg.pop("device", None)
    return cfg, None


def victim_settings(victim: dict, protocol: dict) -> tuple[str, dict]:
    """(victim preset, overrides) of a cell: the protocol's preset, if it names one, else the victim's."""
    return protocol.get("preset") or victim["preset"], {**victim["options"], "model": victim["model"]}


def _victim_config(v, p) -> dict:
    from ..train import victim_preset
    preset, opts = victim_settings(dataclasses.asdict(v), dataclasses.asdict(p))
    cfg = dataclasses.asdict(victim_preset(preset, **opts))
    cfg.pop("device", None)
    return cfg


def _model_missing(model: str) -> str | None:
    from ..models import is_model_name
    if not is_model_name(model):
        return f"model {model!r} is not registered in this installation"
    return None


def _protocol_missing(p, defense: str) -> str | None:
    from ..train.protocols import protocol_names
    if p.name in protocol_names():
        return None
    if p.name != "st":
        return f"protocol {p.name!r} is not registered in this installation"
    if p.options:
        return "protocol 'st' with options needs the registered st protocol (train/standard.py)"
    if defense != "none":
        from ..defenses import parse_defenses
        if any(d.kind != "data" for d in parse_defenses(defense)):
            return "batch defenses need the registered st protocol (train/standard.py)"
    return None


def _defense_missing(defense: str) -> str | None:
    from ..defenses import defense_names
    if defense == "none":
        return None
    missing = [p.partition(":")[0] for p in defense.split(",") if p.partition(":")[0] not in defense_names()]
    return f"defense {', '.join(repr(m) for m in missing)} not registered in this installation" if missing else None


# -- planning ----------------------------------------------------------------------------------
def data_dict(spec: Spec) -> dict:
    return {**dataclasses.asdict(spec.data), "base_dir": str(Path(spec.base_dir).resolve())}


def plan(spec: Spec, data: Data) -> list[Task]:
    """All cells of ``spec`` in execution order (a valid topological order)."""
    tasks: dict[str, Task] = {}
    order: list[str] = []

    def add(t: Task) -> Task:
        if t.key not in tasks:
            tasks[t.key] = t
            order.append(t.key)
        return tasks[t.key]

    dd = data_dict(spec)
    attack_cfgs = {a.label: (_attack_config(a) if a.method != "clean" else (None, None)) for a in spec.attacks}
    cells = []  # (victim, protocol, defense) in group order, deduplicated
    for g in spec.groups:
        for v in g.victims:
            for p in g.protocols:
                for d in g.defenses:
                    if (v, p, d) not in cells:
                        cells.append((v, p, d))

    def evaluated(attack, v, p, d, seed):
        return any(g.covers(attack, v, p, d, seed) for g in spec.groups)
    poisons: dict[tuple, Task] = {}
    for seed in spec.seeds:
        pseed = seed if spec.poison_seed == "each" else spec.seeds[0]
        victim_tasks: dict[tuple, Task] = {}
        for a in spec.attacks:
            poison = None
            if a.method != "clean":
                cfg, why = attack_cfgs[a.label]
                if (a.label, pseed) not in poisons:
                    key = content_key("poison", data=data.key, method=a.method, preset=a.preset,
                                      config=cfg if cfg is not None else a.options, classes=a.classes,
                                      ratio=a.ratio, seed=pseed)
                    params = {"data": dd, "method": a.method, "preset": a.preset, "options": a.options,
                              "classes": list(a.classes) if a.classes else None, "ratio": a.ratio, "seed": pseed}
                    poisons[(a.label, pseed)] = add(Task(key, "poison", {"attack": a.label, "seed": pseed},
                                                         params=params, unavailable=why))
                    if spec.separability:
                        add(Task(content_key("separability", poison=key), "separability",
                                 {"attack": a.label, "seed": pseed}, deps=(key,),
                                 params={"data": dd, "poison": key}, unavailable=why))
                poison = poisons[(a.label, pseed)]
            for v, p, d in cells:
                if not evaluated(a.label, v, p, d, seed):
                    continue
                vs, ps = spec.victims[v], spec.protocols[p]
                why = (poison.unavailable if poison else None) or _model_missing(vs.model) or \
                    _defense_missing(d) or _protocol_missing(ps, d)
                key = content_key("victim", train=poison.key if poison else f"clean:{data.key}", test=data.key,
                                  victim=_victim_config(vs, ps), protocol={"name": ps.name, "options": ps.options},
                                  defense=d, seed=seed)
                params = {"data": dd, "poison": poison.key if poison else None, "victim": dataclasses.asdict(vs),
                          "protocol": dataclasses.asdict(ps), "defense": d, "seed": seed,
                          "classes": list(a.classes) if a.classes else None}
                t = add(Task(key, "victim", {"attack": a.label, "victim": v, "protocol": p, "defense": d,
                                             "seed": seed}, deps=(poison.key,) if poison else (), params=params,
                             unavailable=why))
                victim_tasks[(a.label, v, p, d)] = t
                estimators = spec.mi.estimators_for(a.label, v, p, d, seed)
                if not estimators:
                    continue
                model_task = t if spec.mi.model == "victim" else victim_tasks[("clean", v, p, d)]
                model_task.save_model = True
                images = poison.key if poison else f"clean:{data.key}"
                deps = tuple(dict.fromkeys([model_task.key] + ([poison.key] if poison else [])))
                mi_why = model_task.unavailable or (poison.unavailable if poison else None)
                base = {"data": dd, "poison": poison.key if poison else None, "model": model_task.key,
                        "max_per_class": spec.mi.max_per_class, "seed": spec.mi.seed}
                coords = {"attack": a.label, "victim": v, "protocol": p, "defense": d, "seed": seed}
                for est in estimators:
                    m = spec.mi.slices[est]
                    mk = content_key("mi", model=model_task.key, images=images, estimator=est, m=m,
                                     max_per_class=spec.mi.max_per_class, seed=spec.mi.seed,
                                     conditional=spec.mi.conditional)
                    add(Task(mk, "mi", {**coords, "estimator": est}, deps=deps,
                             params={**base, "estimator": est, "m": m, "conditional": spec.mi.conditional},
                             unavailable=mi_why))
                if spec.mi.covariance:
                    ck = content_key("covariance", model=model_task.key, images=images,
                                     max_per_class=spec.mi.max_per_class, seed=spec.mi.seed)
                    add(Task(ck, "covariance", coords, deps=deps, params=base, unavailable=mi_why))
    return [tasks[k] for k in order]


def is_done(t: Task, results: dict, store: RunStore) -> bool:
    if t.key not in results:
        return False
    return not t.save_model or (store.model_dir(t.key) / "model.safetensors").is_file()


def plan_doc(spec: Spec, data: Data, tasks: list[Task], run_dir: Path) -> dict:
    return {"name": spec.name, "run_dir": str(run_dir), "data": {**dataclasses.asdict(spec.data), "key": data.key,
            "source": data.name, "train": len(data.train), "test": len(data.test),
            "num_classes": data.train.num_classes, "class_names": data.train.class_names,
            "test_class_counts": np.bincount(data.test.labels, minlength=data.test.num_classes).tolist()},
            "seeds": list(spec.seeds), "poison_seed": spec.poison_seed,
            "attacks": [dataclasses.asdict(a) for a in spec.attacks],
            "victims": {k: dataclasses.asdict(v) for k, v in spec.victims.items()},
            "protocols": {k: dataclasses.asdict(v) for k, v in spec.protocols.items()},
            "groups": [dataclasses.asdict(g) for g in spec.groups],
            "mi": {**dataclasses.asdict(spec.mi)}, "separability": spec.separability, "report": spec.report,
            "tasks": [t.to_dict() for t in tasks]}


# -- the plan as text --------------------------------------------------------------------------
def format_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def format_plan(spec: Spec, tasks: list[Task], results: dict, store: RunStore, devices: list[str],
                factors: dict, brief: bool = False) -> str:
    lines = [f"experiment {spec.name}: {len(spec.attacks) - 1} attacks + clean, {len(spec.victims)} victims, "
             f"{len(spec.seeds)} seeds; run dir {store.root}; devices {', '.join(devices)}"]
    hdr = f"{'kind':<13} {'cells':>6} {'done':>6} {'to run':>7} {'unavailable':>12} {'estimate':>10}"
    lines += [hdr, "-" * len(hdr)]
    total = 0.0
    for kind in KINDS:
        ks = [t for t in tasks if t.kind == kind]
        if not ks:
            continue
        done = sum(is_done(t, results, store) for t in ks)
        un = sum(t.unavailable is not None for t in ks)
        todo = [t for t in ks if t.unavailable is None and not is_done(t, results, store)]
        est = sum(t.estimate_s for t in todo)
        total += est
        lines.append(f"{kind:<13} {len(ks):>6} {done:>6} {len(todo):>7} {un:>12} {format_seconds(est):>10}")
    wall = total / max(1, len(devices))
    cal = ", ".join(f"{k} x{v:.2f}" for k, v in factors.items() if abs(v - 1) > 1e-9)
    lines.append(f"estimated time to finish: {format_seconds(wall)}"
                 + (f" over {len(devices)} devices" if len(devices) > 1 else "")
                 + (f" (calibrated on finished cells: {cal})" if cal else " (cost model, uncalibrated)"))
    reasons: dict[str, int] = {}
    for t in tasks:
        if t.unavailable:
            reasons[t.unavailable] = reasons.get(t.unavailable, 0) + 1
    for r, n in reasons.items():
        lines.append(f"unavailable: {r} ({n} cells)")
    if brief:
        return "\n".join(lines)
    todo = [t for t in tasks if t.unavailable is None and not is_done(t, results, store)]
    lines.append("")
    if len(todo) <= 60:
        lines.append("cells to run (estimate):")
        lines += [f"  {t.describe():<70} {format_seconds(t.estimate_s):>8}" for t in todo]
        return "\n".join(lines)
    lines.append("cells to run per attack (estimate):")
    per: dict = {}
    for t in todo:
        row = per.setdefault(t.cell["attack"], {k: [0, 0.0] for k in KINDS})
        row[t.kind][0] += 1
        row[t.kind][1] += t.estimate_s
    hdr = f"  {'attack':<16}" + "".join(f"{k:>14}" for k in KINDS) + f"{'total':>10}"
    lines.append(hdr)
    for a, row in per.items():
        cells = "".join(f"{f'{n} ({format_seconds(s)})' if n else '-':>14}" for n, s in row.values())
        lines.append(f"  {a:<16}{cells}{format_seconds(sum(s for _, s in row.values())):>10}")
    return "\n".join(lines)

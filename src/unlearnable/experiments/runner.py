"""``unlearnable run``: plan the cells of an experiment spec, reuse what exists, run the rest.

Cells (tasks) and what they depend on::

    poison        (attack, poison seed)                       -> artefacts/poison/<key>/
    separability  (poison)                                    Table 21
    victim        (attack, victim, protocol, defense, seed)   test accuracy, history; model when MI needs it
    mi            (victim cell, estimator)                    sliced MI of g(X) and g(X')
    covariance    (victim cell)                               Figure 3

Every cell has a content key (:mod:`.cache`); a cell with a record in ``results.jsonl`` is
done and never recomputed, so rerunning the command after an interruption (even
``kill -9``) continues where it stopped. A generation killed half way resumes from its
own checkpoint (``unlearnable.poison`` resume). Cells whose attack, model, protocol,
defense or estimator is not registered in this installation are planned as
*unavailable* with the reason, and skipped.

On the CPU, cells run one after another in this process. With several devices
(``devices:`` in the spec, ``--devices``, or ``device: cuda`` on a machine with more
than one GPU), one worker process per device takes independent cells as their
dependencies finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UnlearnableError
from ..fsutil import check_output_folder
from .cache import RunStore, content_key
from .config import Spec, load_spec

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


# -- data -------------------------------------------------------------------------------------
@dataclass
class Data:
    """The training and test subsets a spec selects, and their identity."""

    train: object
    test: object
    name: str
    key: str


_DATA_CACHE: dict = {}


def resolve_data_name(name: str, base_dir: str) -> str:
    """A relative data path is looked up beside the config file first, then in the cwd."""
    if name == "fashion-mnist" or name.startswith("fashion-mnist:") or Path(name).is_absolute():
        return name
    beside = Path(base_dir) / name
    return str(beside) if beside.exists() else name


def load_data(spec_data: dict) -> Data:
    """Load and subset the data of a spec (cached per process: workers call this too).

    ``spec_data`` is the spec's data section plus ``base_dir``; the key depends on the
    name as written, the subset settings and the selected images, not on ``base_dir``.
    """
    spec_data = dict(spec_data)
    name = resolve_data_name(spec_data["name"], spec_data.pop("base_dir", "."))
    stamp = None  # a file replaced on disk is read again
    if Path(name).exists():
        st = Path(name).stat()
        stamp = (st.st_mtime_ns, st.st_size)
    ck = (tuple(sorted(spec_data.items())), name, stamp)
    if ck in _DATA_CACHE:
        return _DATA_CACHE[ck]
    from ..data import load_dataset
    splits = load_dataset(name)
    if splits.test is None:
        raise UnlearnableError(f"data {spec_data['name']}: no test split; victims are scored on clean test data")
    splits.check_compatible()
    seed = spec_data["seed"]
    train = splits.train.stratified_subset(spec_data["subset"], seed) if spec_data["subset"] else splits.train
    test = splits.test.stratified_subset(spec_data["test_subset"], seed) if spec_data["test_subset"] else splits.test
    h = hashlib.sha1()
    for arr in (train.images, train.labels, test.images, test.labels):
        h.update(np.ascontiguousarray(arr).tobytes())
    key = content_key("data", spec=spec_data, fingerprint=h.hexdigest(), classes=train.class_names)
    data = Data(train, test, str(splits.name), key)
    _DATA_CACHE[ck] = data
    return data


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
    from ..models import model_names
    from .config import model_key
    if model_key(model) not in {model_key(m) for m in model_names()}:
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
def _data_dict(spec: Spec) -> dict:
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

    dd = _data_dict(spec)
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


# -- execution ---------------------------------------------------------------------------------
def _is_done(t: Task, results: dict, store: RunStore) -> bool:
    if t.key not in results:
        return False
    return not t.save_model or (store.model_dir(t.key) / "model.safetensors").is_file()


def _record(t: Task, out: dict, seconds: float, device: str) -> dict:
    from .. import __version__
    return {"key": t.key, "kind": t.kind, **t.cell, **out, "task_seconds": round(seconds, 2), "device": device,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "version": __version__}


def execute_task(task: dict, run_dir: str, device: str) -> dict:
    """Run one task (a :meth:`Task.to_dict`) on ``device``; return {"ok": record} or {"error": ...}.

    Used in this process and in worker processes (everything passed is plain data).
    """
    from .cells import run_cell
    t = Task(**task)
    store = RunStore(run_dir)
    t0 = time.time()
    try:
        out = run_cell(t, store, device)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - one cell's failure must not stop the others
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return {"error": f"{type(e).__name__}: {msg}" if not isinstance(e, UnlearnableError) else msg,
                "traceback": traceback.format_exc(limit=8)}
    return {"ok": _record(t, out, time.time() - t0, device)}


def _worker(device: str, run_dir: str, inbox, outbox) -> None:
    import os
    os.environ.setdefault("UNLEARNABLE_QUIET", "1")
    from ..progress import set_quiet
    set_quiet(True)
    if device.startswith("cuda"):
        import torch
        torch.cuda.set_device(device)
    while True:
        task = inbox.get()
        if task is None:
            return
        outbox.put((task["key"], device, execute_task(task, run_dir, device)))


def resolve_devices(spec: Spec, devices_arg: str | None) -> list[str]:
    """Devices to run on: --devices, then the spec's ``devices``, then all GPUs when
    ``device`` resolves to CUDA and there is more than one, else the single device."""
    from ..runtime import resolve_device
    if devices_arg:
        devs = [d.strip() for d in devices_arg.split(",") if d.strip()]
    elif spec.devices:
        devs = list(spec.devices)
    else:
        dev = resolve_device(spec.device)
        import torch
        if dev.type == "cuda" and dev.index is None and torch.cuda.device_count() > 1:
            devs = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        else:
            devs = [str(dev)]
    for d in devs:
        resolve_device(d)  # one-line error for CUDA on a machine without it
    return devs


@dataclass
class RunSummary:
    run_dir: Path
    total: int
    cached: int
    done: int
    failed: list
    unavailable: int
    blocked: int
    seconds: float


def run_experiment(config: str | Path | Spec, out: str | Path | None = None, *, dry_run: bool = False,
                   devices: str | None = None, echo=print) -> RunSummary:
    """Plan and run an experiment; ``echo`` receives the plan / progress lines meant for stdout."""
    from .costs import calibrate, estimate
    spec = config if isinstance(config, Spec) else load_spec(config)
    run_dir = Path(out or spec.out or Path("runs") / spec.name)
    check_output_folder(run_dir, what="run directory")  # before the data is loaded: a bad --out costs nothing
    devs = resolve_devices(spec, devices)
    data = load_data(_data_dict(spec))
    tasks = plan(spec, data)
    store = RunStore(run_dir)
    results = store.load_results() if dry_run else None
    ctx = contextlib.nullcontext() if dry_run else store.lock()
    with ctx:
        if not dry_run:
            results = store.reconcile()
        for t in tasks:
            t.estimate_s = estimate(t, data, devs[0])
        factors = calibrate(tasks, results)
        for t in tasks:
            t.estimate_s *= factors.get(t.kind, 1.0)
        plan_doc = _plan_doc(spec, data, tasks, run_dir)
        if dry_run:
            echo(format_plan(spec, tasks, results, store, devs, factors))
            return RunSummary(run_dir, len(tasks), sum(_is_done(t, results, store) for t in tasks), 0, [],
                              sum(t.unavailable is not None for t in tasks), 0, 0.0)
        store.root.mkdir(parents=True, exist_ok=True)
        if spec.source:
            (store.root / "config.yaml").write_text(spec.source)
        store.write_plan(plan_doc)
        echo(format_plan(spec, tasks, results, store, devs, factors, brief=True))
        t0 = time.time()
        if len(devs) > 1:
            summary = _run_pool(tasks, results, store, devs)
        else:
            summary = _run_sequential(tasks, results, store, devs[0])
        summary.seconds = time.time() - t0
        summary.run_dir = run_dir
    return summary


def _plan_doc(spec: Spec, data: Data, tasks: list[Task], run_dir: Path) -> dict:
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


class _Progress:
    """One status line per finished cell (stderr; silenced by -q)."""

    def __init__(self, tasks, results, store):
        from ..progress import log
        self.todo = [t for t in tasks if t.unavailable is None and not _is_done(t, results, store)]
        self.n, self.i, self.echo = len(self.todo), 0, log
        self.left = sum(t.estimate_s for t in self.todo)

    def finished(self, t: Task, res: dict):
        self.i += 1
        self.left = max(0.0, self.left - t.estimate_s)
        if "ok" in res:
            rec = res["ok"]
            what = _headline(rec)
            self.echo(f"[{self.i}/{self.n}] {t.describe()}: {what} ({rec['task_seconds']:.1f} s; "
                      f"about {_fmt_s(self.left)} left)")
        else:
            self.echo(f"[{self.i}/{self.n}] {t.describe()}: FAILED: {res['error']}")


def _headline(rec: dict) -> str:
    k = rec["kind"]
    if k == "victim":
        return f"test acc {100 * rec['test_acc']:.2f}%"
    if k == "mi":
        return f"SMI {rec['mean']:.4f} (SE {rec['se']:.4f})"
    if k == "poison":
        return f"L-inf {rec.get('linf_255')}/255, generated in {rec.get('generate_s', 0):.0f} s"
    if k == "separability":
        return f"linear train acc noise {100 * rec['noise_train_acc']:.1f}%, poisoned {100 * rec['poisoned_train_acc']:.1f}%"
    if k == "covariance":
        return f"logdet/d {rec['poisoned']['logdet_per_dim']:.3f}"
    return "done"


def _blocked(t: Task, state: dict) -> bool:
    return any(state.get(d) in ("failed", "unavailable", "blocked") for d in t.deps)


def _finish(t: Task, res: dict, results: dict, store: RunStore, failed: list) -> str:
    if "ok" in res:
        if t.key not in results:
            store.append(res["ok"])
            results[t.key] = res["ok"]
        return "done"
    failed.append((t, res["error"]))
    store.append_failure({"key": t.key, "kind": t.kind, **t.cell, "error": res["error"],
                          "traceback": res.get("traceback", ""), "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return "failed"


def _run_sequential(tasks, results, store, device) -> RunSummary:
    state, failed = {}, []
    prog = _Progress(tasks, results, store)
    cached = blocked = 0
    for t in tasks:
        if t.unavailable is not None:
            state[t.key] = "unavailable"
            continue
        if _is_done(t, results, store):
            state[t.key] = "done"
            cached += 1
            continue
        if _blocked(t, state):
            state[t.key] = "blocked"
            blocked += 1
            continue
        res = execute_task(t.to_dict(), str(store.root), device)
        state[t.key] = _finish(t, res, results, store, failed)
        prog.finished(t, res)
    return RunSummary(store.root, len(tasks), cached, prog.i - len(failed), failed,
                      sum(t.unavailable is not None for t in tasks), blocked, 0.0)


def _run_pool(tasks, results, store, devices) -> RunSummary:
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    outbox = ctx.Queue()
    workers = []
    for d in devices:
        inbox = ctx.Queue()
        p = ctx.Process(target=_worker, args=(d, str(store.root), inbox, outbox), daemon=True)
        p.start()
        workers.append((d, p, inbox))
    state, failed = {}, []
    prog = _Progress(tasks, results, store)
    cached = blocked = 0
    pending = []
    for t in tasks:
        if t.unavailable is not None:
            state[t.key] = "unavailable"
        elif _is_done(t, results, store):
            state[t.key] = "done"
            cached += 1
        else:
            pending.append(t)
    by_key = {t.key: t for t in tasks}
    idle = [w for w in workers]
    running: dict[str, tuple] = {}
    try:
        while pending or running:
            progressed = True
            while progressed:
                progressed = False
                for t in list(pending):
                    if _blocked(t, state):
                        state[t.key] = "blocked"
                        blocked += 1
                        pending.remove(t)
                        progressed = True
            for t in list(pending):
                if not idle:
                    break
                if all(state.get(d) == "done" for d in t.deps):
                    w = idle.pop(0)
                    w[2].put(t.to_dict())
                    running[t.key] = w
                    pending.remove(t)
            if not running:
                if pending:  # nothing can start: dependencies outside the plan (cannot happen) or a bug
                    raise UnlearnableError(f"{len(pending)} cells wait for dependencies that never ran")
                break
            key, _dev, res = _get_result(outbox, workers)
            t = by_key[key]
            idle.append(running.pop(key))
            state[key] = _finish(t, res, results, store, failed)
            prog.finished(t, res)
    finally:
        for _, p, inbox in workers:
            if p.is_alive():
                inbox.put(None)
        for _, p, _ in workers:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    return RunSummary(store.root, len(tasks), cached, prog.i - len(failed), failed,
                      sum(t.unavailable is not None for t in tasks), blocked, 0.0)


def _get_result(outbox, workers):
    import queue
    while True:
        try:
            return outbox.get(timeout=5)
        except queue.Empty:
            dead = [d for d, p, _ in workers if not p.is_alive()]
            if dead:
                raise UnlearnableError(f"worker process for {', '.join(dead)} died (out of memory?); "
                                       f"rerun the same command to continue")


# -- the plan as text --------------------------------------------------------------------------
def _fmt_s(s: float) -> str:
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
        done = sum(_is_done(t, results, store) for t in ks)
        un = sum(t.unavailable is not None for t in ks)
        todo = [t for t in ks if t.unavailable is None and not _is_done(t, results, store)]
        est = sum(t.estimate_s for t in todo)
        total += est
        lines.append(f"{kind:<13} {len(ks):>6} {done:>6} {len(todo):>7} {un:>12} {_fmt_s(est):>10}")
    wall = total / max(1, len(devices))
    cal = ", ".join(f"{k} x{v:.2f}" for k, v in factors.items() if abs(v - 1) > 1e-9)
    lines.append(f"estimated time to finish: {_fmt_s(wall)}"
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
    todo = [t for t in tasks if t.unavailable is None and not _is_done(t, results, store)]
    lines.append("")
    if len(todo) <= 60:
        lines.append("cells to run (estimate):")
        lines += [f"  {t.describe():<70} {_fmt_s(t.estimate_s):>8}" for t in todo]
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
        cells = "".join(f"{f'{n} ({_fmt_s(s)})' if n else '-':>14}" for n, s in row.values())
        lines.append(f"  {a:<16}{cells}{_fmt_s(sum(s for _, s in row.values())):>10}")
    return "\n".join(lines)

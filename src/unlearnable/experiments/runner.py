"""``unlearnable run``: run the cells of an experiment spec's plan, reusing what exists.

The plan is :mod:`.plan`'s, the data :mod:`.loading`'s, what each cell computes
:mod:`.cells`'s and the time estimates :mod:`.costs`'; this module executes: one cell after
another in this process, or a pool of workers, one per device.

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
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnlearnableError
from ..fsutil import check_output_folder
from .cache import RunStore
from .config import Spec, load_spec
from .loading import load_data
from .plan import Task, data_dict, format_plan, format_seconds, is_done, plan, plan_doc


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
    data = load_data(data_dict(spec))
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
        doc = plan_doc(spec, data, tasks, run_dir)
        if dry_run:
            echo(format_plan(spec, tasks, results, store, devs, factors))
            return RunSummary(run_dir, len(tasks), sum(is_done(t, results, store) for t in tasks), 0, [],
                              sum(t.unavailable is not None for t in tasks), 0, 0.0)
        store.root.mkdir(parents=True, exist_ok=True)
        if spec.source:
            (store.root / "config.yaml").write_text(spec.source)
        store.write_plan(doc)
        echo(format_plan(spec, tasks, results, store, devs, factors, brief=True))
        t0 = time.time()
        if len(devs) > 1:
            summary = _run_pool(tasks, results, store, devs)
        else:
            summary = _run_sequential(tasks, results, store, devs[0])
        summary.seconds = time.time() - t0
        summary.run_dir = run_dir
    return summary




class _Progress:
    """One status line per finished cell (stderr; silenced by -q)."""

    def __init__(self, tasks, results, store):
        from ..progress import log
        self.todo = [t for t in tasks if t.unavailable is None and not is_done(t, results, store)]
        self.n, self.i, self.echo = len(self.todo), 0, log
        self.left = sum(t.estimate_s for t in self.todo)

    def finished(self, t: Task, res: dict):
        self.i += 1
        self.left = max(0.0, self.left - t.estimate_s)
        if "ok" in res:
            rec = res["ok"]
            what = _headline(rec)
            self.echo(f"[{self.i}/{self.n}] {t.describe()}: {what} ({rec['task_seconds']:.1f} s; "
                      f"about {format_seconds(self.left)} left)")
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
        if is_done(t, results, store):
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
        elif is_done(t, results, store):
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

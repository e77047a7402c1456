"""Jobs of the local web page: one folder each, one task running at a time, in its own process.

A job's folder (``WORKDIR/jobs/ID``)::

    job.json          what the person chose: the images' source, strength, classes; written
                      by the server only
    input/            uploaded images (absent when the job names a folder on this machine)
    output/           protect_folder's output folder and manifest
    protect.json      the protect task's status, written by its worker only
    verify.json       the verify task's status, and its report once done
    protect.log ...   each worker's stderr

A task runs in a worker process (:mod:`.worker`) so that cancelling is a signal, a page
that is closed or reloaded changes nothing, and a crash of one run cannot take the server
down. The worker calls :func:`..protect.protect_folder` / :func:`..protect.verify_folder`
themselves, so a job's output is byte for byte what ``unlearnable protect`` writes, and it
resumes the same way: a protect task that was running when the server stopped is started
again when the server starts (finished images are kept, see docs/protect.md).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UnlearnableError
from ..fsutil import write_json
from ..protect.engine import STRENGTHS
from .uploads import Inbox, Limits

TASKS = ("protect", "verify")
ACTIVE = ("queued", "running")
_ID = re.compile(r"[0-9a-f]{12}")


class Busy(UnlearnableError):
    """Another task is running; one runs at a time."""


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    """A worker process of ours with this pid is still running (one the server did not start
    itself, e.g. left by a server that was killed)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return b"unlearnable.serve.worker" in cmdline


@dataclass
class Options:
    """Settings of the server's runs, fixed when the server starts: the reference classes
    and, for tests and experts, overrides of protect_folder's and verify_folder's defaults."""
    reference: str = "fashion-mnist"
    device: str = "auto"
    protect: dict = field(default_factory=dict)
    verify: dict = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)


class Job:
    def __init__(self, folder: Path):
        self.folder = folder
        self.id = folder.name
        self.spec = read_json(folder / "job.json") or {}

    @property
    def input_dir(self) -> Path:
        folder = self.spec.get("folder")
        return Path(folder) if folder else self.folder / "input"

    @property
    def output_dir(self) -> Path:
        return self.folder / "output"

    def status(self, task: str) -> dict:
        return read_json(self.folder / f"{task}.json") or {"state": "new"}

    def save(self) -> None:
        write_json(self.folder / "job.json", self.spec)


class Jobs:
    """The server's jobs under ``workdir``; :meth:`start` runs one task at a time."""

    def __init__(self, workdir: str | os.PathLike, options: Options | None = None):
        self.root = Path(workdir).expanduser().resolve() / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.options = options or Options()
        self._procs: dict[tuple[str, str], subprocess.Popen] = {}
        self._inboxes: dict[str, Inbox] = {}  # only the server writes to a job's input folder

    # -- jobs -------------------------------------------------------------------------
    def create(self, folder: str | None = None) -> Job:
        """A new job, for uploads (``folder`` None) or for a folder on this machine."""
        spec = {"created": time.time(), "source": "upload", "folder": None}
        if folder:
            path = Path(folder).expanduser()
            if not path.is_absolute():
                raise UnlearnableError(f"{folder}: give the folder's full path (it starts with /)")
            path = path.resolve()
            if not path.is_dir():
                raise UnlearnableError(f"{folder}: no such folder on this machine")
            if not os.access(path, os.R_OK | os.X_OK):
                raise UnlearnableError(f"{folder}: this folder cannot be read")
            if path == self.root or self.root in path.parents:
                raise UnlearnableError(f"{folder}: this is inside the server's own work folder")
            if path in self.root.parents:
                raise UnlearnableError(f"{folder}: this folder contains the server's work folder ({self.root}), "
                                       f"whose jobs would be protected too; choose a folder inside it, or start "
                                       f"the server with a work folder elsewhere")
            spec.update(source="folder", folder=str(path))
        while True:
            job_id = secrets.token_hex(6)
            folder_path = self.root / job_id
            try:
                folder_path.mkdir()
                break
            except FileExistsError:
                continue
        job = Job(folder_path)
        job.spec = {"id": job_id, **spec}
        job.save()
        if not folder:
            (folder_path / "input").mkdir()
        return job

    def get(self, job_id: str) -> Job:
        if not _ID.fullmatch(job_id or "") or not (self.root / job_id / "job.json").is_file():
            raise KeyError(job_id)
        return Job(self.root / job_id)

    def all(self) -> list[Job]:
        jobs = [Job(p) for p in self.root.iterdir() if _ID.fullmatch(p.name) and (p / "job.json").is_file()]
        return sorted(jobs, key=lambda j: j.spec.get("created", 0))

    def inbox(self, job: Job) -> Inbox:
        if job.spec.get("source") != "upload":
            raise UnlearnableError("this job protects a folder on this machine; it takes no uploads")
        if self.state(job, "protect") in ACTIVE:
            raise Busy("images cannot be added while the job runs")
        if job.id not in self._inboxes:  # counted once: a walk of the folder per upload would add up
            self._inboxes[job.id] = Inbox(job.input_dir, self.options.limits)
        return self._inboxes[job.id]

    # -- tasks ------------------------------------------------------------------------
    def state(self, job: Job, task: str, status: dict | None = None) -> str:
        """The task's state (from ``status`` when already read); a task recorded as running
        whose worker is gone is "interrupted"."""
        st = status if status is not None else job.status(task)
        state = st.get("state", "new")
        if state in ACTIVE:
            proc = self._procs.get((job.id, task))
            running = proc.poll() is None if proc is not None else _alive(st.get("pid"))
            if not running:
                return "interrupted"
        return state

    def active(self) -> tuple[Job, str] | None:
        for job in self.all():
            for task in TASKS:
                if self.state(job, task) in ACTIVE:
                    return job, task
        return None

    def start(self, job: Job, task: str, settings: dict | None = None) -> None:
        """Start ``task`` on ``job`` in a worker; :class:`Busy` while any task runs."""
        if task not in TASKS:
            raise UnlearnableError(f"unknown task {task!r}")
        busy = self.active()
        if busy is not None:
            other, what = busy
            where = "this job" if other.id == job.id else f"job {other.id}"
            raise Busy(f"a {what} run is already going on ({where}); wait for it or cancel it first")
        if task == "protect":
            settings = dict(settings or {})
            strength = settings.get("strength", "mid")
            if strength not in STRENGTHS:
                raise UnlearnableError(f"unknown strength {strength!r}; choose from {', '.join(STRENGTHS)}")
            job.spec["protect"] = {"strength": strength, "single_class": bool(settings.get("single_class", True)),
                                   "reference": self.options.reference, "device": self.options.device,
                                   **self.options.protect}
        else:
            if job.status("protect").get("state") != "done":
                raise UnlearnableError("protect the images first; the check compares them with the originals")
            job.spec["verify"] = {"device": self.options.device, **self.options.verify}
        job.save()
        self._launch(job, task)

    def _launch(self, job: Job, task: str) -> None:
        write_json(job.folder / f"{task}.json", {"state": "queued", "queued": time.time()})
        env = {**os.environ, "UNLEARNABLE_QUIET": "1", "PYTHONUNBUFFERED": "1"}
        with open(job.folder / f"{task}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "unlearnable.serve.worker", str(job.folder), task],
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)  # Ctrl-C at the server's terminal is the server's
        self._procs[(job.id, task)] = proc

    def cancel(self, job: Job) -> bool:
        """Stop the job's running task (finished images are kept); False when none runs."""
        stopped = False
        for task in TASKS:
            if self.state(job, task) not in ACTIVE:
                continue
            proc = self._procs.get((job.id, task))
            pid = proc.pid if proc is not None else job.status(task).get("pid")
            try:
                os.kill(pid, signal.SIGTERM)
            except (OSError, TypeError):
                pass
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            st = job.status(task)
            if st.get("state") in ACTIVE:  # the worker died before it could say so
                write_json(job.folder / f"{task}.json", {**st, "state": "cancelled"})
            stopped = True
        return stopped

    def resume_unfinished(self) -> list[str]:
        """Start again the protect task that was running when the server stopped (the most
        recent one; its finished images are kept). Returns the jobs started."""
        if self.active() is not None:
            return []
        for job in reversed(self.all()):
            if self.state(job, "protect") == "interrupted":
                self._launch(job, "protect")
                return [job.id]
        return []

    def shutdown(self) -> None:
        """Stop the workers this server started; their protect tasks resume on the next start."""
        for (job_id, task), proc in list(self._procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                job = Job(self.root / job_id)
                st = job.status(task)
                write_json(job.folder / f"{task}.json", {**st, "state": "interrupted"})

    def progress(self, job: Job, task: str) -> dict:
        """The task's status for the page: state, fraction done, seconds left (when known)."""
        st = job.status(task)
        state = self.state(job, task, st)
        out = {"state": state, "error": st.get("error")}
        done, total = st.get("done"), st.get("total")
        if state == "done":
            out["fraction"] = 1.0
        elif total:
            out["fraction"] = min(1.0, done / total)
        if state == "running" and done and total and st.get("started"):
            elapsed = time.time() - st["started"]
            out["eta_s"] = round(elapsed * (total - done) / done, 1)
        if state == "running" and st.get("started"):
            out["elapsed_s"] = round(time.time() - st["started"], 1)
        return out

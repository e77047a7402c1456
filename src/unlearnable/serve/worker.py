"""One task of one job, in its own process: ``python -m unlearnable.serve.worker JOB_DIR TASK``.

Started by :class:`.jobs.Jobs` only. It writes ``TASK.json`` in the job's folder (state,
progress, the result or the error as one plain line) and nothing outside that folder
except what the task itself writes (protect's output folder inside the job). SIGTERM
stops the task where it is (finished images stay; see :mod:`..protect.folder`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path

from ..errors import UnlearnableError
from ..fsutil import write_json
from .jobs import Job

MIN_INTERVAL_S = 0.5  # progress writes at most this often (the last one always)


class Stopped(BaseException):
    """SIGTERM: the person pressed cancel, or the server is stopping."""


def _stop(signum, frame):
    raise Stopped()


class Status:
    def __init__(self, job: Job, task: str):
        self.path = job.folder / f"{task}.json"
        self.data = {"state": "running", "pid": os.getpid(), "started": time.time(), "done": 0, "total": None}
        self._last = 0.0
        self.save()

    def save(self, **changes) -> None:
        self.data.update(changes, updated=time.time())
        write_json(self.path, self.data)

    def progress(self, done: float, total: float) -> None:
        now = time.time()
        self.data.update(done=round(float(done), 4), total=total)
        if now - self._last >= MIN_INTERVAL_S or done >= total:
            self._last = now
            self.save()


def run_protect(job: Job, status: Status) -> dict:
    from ..protect import protect_folder
    return protect_folder(job.input_dir, job.output_dir, on_progress=status.progress,
                          **job.spec["protect"]).to_dict()


def run_verify(job: Job, status: Status) -> dict:
    from ..protect.verify import format_report, verify_folder
    report = verify_folder(job.input_dir, job.output_dir, out=job.folder / "verify-report.json",
                           on_progress=status.progress, **job.spec.get("verify", {}))
    return {"report": report, "table": format_report(report)}


def main(argv: list[str] | None = None) -> int:
    folder, task = (argv if argv is not None else sys.argv[1:])
    job = Job(Path(folder))
    signal.signal(signal.SIGTERM, _stop)
    status = Status(job, task)
    try:
        result = (run_protect if task == "protect" else run_verify)(job, status)
    except Stopped:
        status.save(state="cancelled")
        return 130
    except UnlearnableError as e:
        status.save(state="failed", error=str(e))
        return 2
    except MemoryError:
        status.save(state="failed", error="out of memory: try fewer or smaller images")
        return 2
    except Exception as e:  # noqa: BLE001 - the page gets one line; the log keeps the traceback
        traceback.print_exc()
        status.save(state="failed", error=f"internal error ({type(e).__name__}: {e}); details in {task}.log")
        return 1
    status.save(state="done", finished=time.time(), result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

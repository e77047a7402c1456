"""Progress bars with ETA for every loop that can take more than a few seconds.

A thin wrapper over tqdm so that the whole package can be silenced at once
(``UNLEARNABLE_QUIET=1`` or :func:`set_quiet`), which tests and batch runs use.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

_quiet = os.environ.get("UNLEARNABLE_QUIET", "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def bar(iterable=None, *, total=None, desc: str = "", unit: str = "it", leave: bool = False, initial: int = 0):
    """A tqdm bar on stderr showing rate and ETA; disabled when quiet."""
    return tqdm(
        iterable,
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        leave=leave,
        disable=_quiet,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def log(msg: str) -> None:
    """One status line on stderr (kept off stdout, which carries results)."""
    if not _quiet:
        tqdm.write(msg, file=sys.stderr)


class Reported:
    """A counted bar that also calls ``on_progress(done, total)`` after every update, so a
    caller without a terminal (the local web page's worker) can show progress and ETA.
    It counts by itself because a quiet tqdm bar does not."""

    def __init__(self, total: float, on_progress, *, desc: str = "", unit: str = "it"):
        self.total, self.done, self.on_progress = total, 0.0, on_progress
        self._bar = bar(total=total, desc=desc, unit=unit)

    def __enter__(self):
        self._bar.__enter__()
        if self.on_progress is not None:
            self.on_progress(0.0, self.total)
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    def update(self, n: float = 1) -> None:
        self._bar.update(n)
        self.done = min(self.done + n, self.total)
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)

"""Content-addressed artefacts and the append-only results log of a run directory.

Layout of ``RUN_DIR``::

    plan.json                   the planned cells (keys, coordinates, availability), rewritten each run
    config.yaml                 the spec the plan came from
    results.jsonl               one JSON line per finished cell (deduplicated on "key")
    failures.jsonl              cells that raised, with the message (retried on the next run)
    artefacts/poison/<key>/     protected datasets (unlearnable.poison format; <key>.partial while running)
    artefacts/models/<key>/     victim models needed for MI (model.json + model.safetensors)
    artefacts/cells/<key>.json  the record of every finished cell (written before its results line)
    artefacts/mi/<key>.npz      per-slice MI values

A key is the SHA-256 (first 20 hex digits) of the canonical JSON of everything that
determines the artefact: the data (spec, subset sizes, subset seed and a fingerprint of
the selected images), the attack (name and fully resolved config), the victim config,
protocol, defenses, seeds and the package version. A cell whose key has a record is
never recomputed. Device names never enter a key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import UnlearnableError
from ..fsutil import _json_default, exclusive_lock, write_json


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def content_key(kind: str, **parts) -> str:
    """The key of an artefact of ``kind`` determined by ``parts`` (JSON-serialisable)."""
    from .. import __version__
    payload = canonical({"kind": kind, "version": __version__, **parts})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class RunStore:
    """Results and artefacts of one run directory; one writer at a time (see :meth:`lock`)."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)
        self.artefacts = self.root / "artefacts"
        self.results_path = self.root / "results.jsonl"
        self.failures_path = self.root / "failures.jsonl"

    # -- paths -------------------------------------------------------------------
    def poison_dir(self, key: str) -> Path:
        return self.artefacts / "poison" / key

    def model_dir(self, key: str) -> Path:
        return self.artefacts / "models" / key

    def cell_path(self, key: str) -> Path:
        return self.artefacts / "cells" / f"{key}.json"

    def slices_path(self, key: str) -> Path:
        return self.artefacts / "mi" / f"{key}.npz"

    # -- locking -------------------------------------------------------------------
    def lock(self):
        """An exclusive lock on the run directory (released by the OS if the process dies)."""
        return exclusive_lock(self.root / ".lock", f"{self.root} is in use by another 'unlearnable run'")

    # -- results -------------------------------------------------------------------
    def load_results(self, repair: bool = False) -> dict[str, dict]:
        """Records by key from ``results.jsonl``; later duplicates are ignored.

        A line cut short by a kill (no newline, or not valid JSON) is skipped; with
        ``repair`` the file is rewritten without it, so that the next append starts on
        a fresh line.
        """
        out: dict[str, dict] = {}
        if not self.results_path.is_file():
            return out
        raw = self.results_path.read_bytes()
        good, bad = [], 0
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = rec["key"]
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            if key not in out:
                out[key] = rec
                good.append(line)
        if repair and (bad or (raw and not raw.endswith(b"\n"))):
            tmp = self.results_path.with_name(".results.jsonl.repair")
            tmp.write_bytes(b"".join(g + b"\n" for g in good))
            os.replace(tmp, self.results_path)
        return out

    def append(self, record: dict) -> None:
        """Write the cell's record file, then append its line to ``results.jsonl`` (one write, fsynced)."""
        write_json(self.cell_path(record["key"]), record)
        self._append_line(self.results_path, record)

    def append_failure(self, record: dict) -> None:
        self._append_line(self.failures_path, record)

    @staticmethod
    def _append_line(path: Path, record: dict) -> None:
        data = (canonical(record) + "\n").encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def reconcile(self) -> dict[str, dict]:
        """Load results, adding records whose cell file was written but whose line was not
        (a kill between the two writes). Returns records by key."""
        results = self.load_results(repair=True)
        cells = self.artefacts / "cells"
        if cells.is_dir():
            for p in sorted(cells.glob("*.json")):
                if p.stem in results:
                    continue
                try:
                    rec = json.loads(p.read_text())
                except ValueError:
                    continue  # write_json is atomic; an unreadable file is not ours
                if rec.get("key") == p.stem:
                    self._append_line(self.results_path, rec)
                    results[p.stem] = rec
        return results

    def write_plan(self, plan: dict) -> None:
        write_json(self.root / "plan.json", plan)

    def read_plan(self) -> dict:
        path = self.root / "plan.json"
        if not path.is_file():
            raise UnlearnableError(f"{self.root}: no plan.json (not a run directory made by 'unlearnable run')")
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise UnlearnableError(f"{path}: unreadable ({e})") from None

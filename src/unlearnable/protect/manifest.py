"""``OUT_DIR/manifest.json``: one entry per protected image, the settings, the last run.

An entry records the input's relative path and SHA-256, the output's relative path and
SHA-256, the class, size (after EXIF orientation), modes, the L-inf distance actually
written (in levels), PSNR and SSIM, and the key of the settings that made it. A rerun
treats an image as finished when its entry has the input's current hash, the current
settings key, and an output file with the recorded hash. The file is replaced atomically
after every unit (and when a run stops), so it never describes a half-written image.

A lock (``flock`` on ``OUT_DIR/.unlearnable-protect.lock``, released by the OS when the
process dies) keeps two runs from writing into one folder at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import UnlearnableError
from ..fsutil import exclusive_lock, write_json

FORMAT = "unlearnable-protect/1"
NAME = "manifest.json"
LOCK = ".unlearnable-protect.lock"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class Manifest:
    def __init__(self, out_root: Path, data: dict | None = None):
        self.out_root = out_root
        self.path = out_root / NAME
        data = data or {}
        self.entries: dict[str, dict] = {e["input"]: e for e in data.get("images", [])}
        # Inputs that could not be decoded, so that a rerun does not redo their unit for nothing.
        self.unreadable: dict[str, dict] = {e["input"]: e for e in data.get("unreadable", [])}
        self.settings: dict = data.get("settings", {})
        self.extra: dict = {}

    @classmethod
    def open(cls, out_root: Path) -> "Manifest":
        """The folder's manifest; a fresh one for a missing or empty folder.

        A non-empty folder without a manifest is refused: its files are not ours to replace.
        """
        path = out_root / NAME
        if path.is_symlink():
            raise UnlearnableError(f"{path} is a symbolic link: refusing to use it")
        if path.is_file():
            return cls(out_root, read_manifest_file(path))
        if out_root.is_dir() and any(p.name != LOCK for p in out_root.iterdir()):
            raise UnlearnableError(f"output folder {out_root} is not empty and has no {NAME}: choose a new or "
                                   f"empty folder (or one written by 'unlearnable protect')")
        return cls(out_root)

    def is_done(self, rel: str, sha: str, key: str) -> bool:
        e = self.entries.get(rel)
        if e is None or e.get("sha256") != sha or e.get("settings") != key:
            return False
        out = self.out_root / e["output"]
        return out.is_file() and not out.is_symlink() and sha256_file(out) == e.get("output_sha256")

    def record(self, entry: dict) -> None:
        self.entries[entry["input"]] = entry
        self.unreadable.pop(entry["input"], None)

    def known_unreadable(self, rel: str, sha: str) -> str | None:
        """The recorded reason when this exact file was found undecodable before."""
        e = self.unreadable.get(rel)
        return e["reason"] if e is not None and e.get("sha256") == sha else None

    def record_unreadable(self, rel: str, sha: str, reason: str) -> None:
        self.unreadable[rel] = {"input": rel, "sha256": sha, "reason": reason}

    def save(self) -> None:
        write_json(self.path, {"format": FORMAT, "settings": self.settings, **self.extra,
                               "images": [self.entries[k] for k in sorted(self.entries)],
                               "unreadable": [self.unreadable[k] for k in sorted(self.unreadable)]})


# What every entry must hold, and its type: a rerun and verify rely on these.
_ENTRY_KEYS = {"input": str, "output": str, "class": str, "sha256": str, "output_sha256": str, "settings": str}
_UNREADABLE_KEYS = {"input": str, "sha256": str, "reason": str}


def read_manifest_file(path: Path) -> dict:
    """Read and check a protect manifest; one-line error naming what is wrong.

    A damaged manifest is refused, never silently discarded: it is the record of which
    images are finished, and discarding it would redo (or orphan) the user's outputs.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise UnlearnableError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UnlearnableError(f"{path} was not written by 'unlearnable protect' (format "
                               f"{data.get('format') if isinstance(data, dict) else None!r})")
    settings = data.get("settings", {})
    if not isinstance(settings, dict) or not all(isinstance(settings.get(k, {}), dict) for k in ("config", "reference")):
        raise UnlearnableError(f"{path}: not a protect manifest: 'settings' (or its config, reference) is not an object")
    for field, keys in (("images", _ENTRY_KEYS), ("unreadable", _UNREADABLE_KEYS)):
        entries = data.get(field, [])
        if not isinstance(entries, list):
            raise UnlearnableError(f"{path}: not a protect manifest: '{field}' is not a list of entries")
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise UnlearnableError(f"{path}: not a protect manifest: {field}[{i}] is not an object")
            for key, kind in keys.items():
                if not isinstance(e.get(key), kind):
                    what = "missing" if key not in e else f"{type(e[key]).__name__}, not {kind.__name__}"
                    raise UnlearnableError(f"{path}: not a protect manifest: {field}[{i}].{key} is {what}")
            for key in ("input", "output") if field == "images" else ("input",):
                rel = Path(e[key])
                if not e[key] or rel.is_absolute() or ".." in rel.parts or "\0" in e[key]:
                    raise UnlearnableError(f"{path}: not a protect manifest: {field}[{i}].{key} {e[key]!r} "
                                           f"is not a relative path inside the folder")
    return data


def output_lock(out_root: Path):
    """Create ``out_root`` and hold its lock for the block; one-line error when taken."""
    return exclusive_lock(out_root / LOCK, f"another 'unlearnable protect' is writing to {out_root}")

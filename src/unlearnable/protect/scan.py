"""Finding the inputs of ``unlearnable protect`` and keeping every write inside OUT_DIR.

Rules (all paths are resolved first):

* IN_DIR must be a folder; OUT_DIR must not be IN_DIR nor contain it (an output could
  then replace an input). OUT_DIR may lie inside IN_DIR: its subtree is not scanned.
* The walk is recursive and sorted; hidden files and folders (name starting with ".")
  are ignored. Symbolic links to folders are not followed; a symbolic link to a file is
  read only when its target lies inside IN_DIR (otherwise it is skipped and listed).
* A file is an input when its suffix belongs to a format this Pillow can open, or when
  Pillow recognises its header; other files are ignored. Common image formats Pillow
  cannot read (HEIC, RAW, SVG, ...) are skipped and listed.
* Names containing control characters or bytes that are not valid in the file-system
  encoding are skipped and listed (they cannot be written back safely or recorded).
* The output keeps the relative folder and the file stem, with the output format's
  suffix. When two inputs of one folder would get the same output name (``a.jpg`` and
  ``a.png``), each of them keeps its full name instead (``a.jpg.png``, ``a.png.png``).
* :func:`safe_output_path` re-checks every output path at write time: no absolute path,
  no ``..``, no component that is a symbolic link or a non-folder, and the resolved path
  must lie inside OUT_DIR.
"""

from __future__ import annotations

import os
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import UnlearnableError
from .images import UNREADABLE_IMAGE_SUFFIXES, identify, readable_suffixes

ROOT_CLASS = "."  # class of images directly in IN_DIR (folder labels)
SINGLE_CLASS = "all"  # class of every image with --single-class


class UnsafePath(Exception):
    """An output path that could write outside OUT_DIR; the message says why."""


@dataclass(frozen=True)
class Candidate:
    rel: str  # input path relative to IN_DIR, POSIX form (the manifest key)
    path: Path  # where to read it
    out_rel: str  # output path relative to OUT_DIR, POSIX form
    label: str  # class name


@dataclass(frozen=True)
class Skipped:
    rel: str
    reason: str


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_dirs(in_dir, out_dir) -> tuple[Path, Path]:
    """Resolved (IN_DIR, OUT_DIR) after the folder rules; raises UnlearnableError."""
    src = Path(in_dir)
    if not src.is_dir():
        raise UnlearnableError(f"input folder not found: {in_dir}")
    src = src.resolve(strict=True)
    dst = Path(out_dir).resolve()
    if dst.exists() and not dst.is_dir():
        raise UnlearnableError(f"output path exists and is not a folder: {out_dir}")
    if _inside(src, dst):
        raise UnlearnableError(f"OUT_DIR {out_dir} is IN_DIR or contains it: outputs could replace inputs; "
                               f"choose a separate folder")
    return src, dst


def odd_name(name: str) -> bool:
    """Control characters (newline, tab, ...) or undecodable bytes (surrogate escapes)."""
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name)


def scan_inputs(in_root: Path, out_root: Path, *, single_class: bool, suffix: str
                ) -> tuple[list[Candidate], list[Skipped], int]:
    """(inputs sorted by relative path, skipped files with reasons, number of ignored files)."""
    readable = readable_suffixes()
    found: list[tuple[str, Path]] = []
    skipped: list[Skipped] = []
    ignored = 0
    for folder, dirs, files in os.walk(in_root, followlinks=False):
        here = Path(folder)
        rel_here = here.relative_to(in_root)
        keep = []
        for d in sorted(dirs):
            p = here / d
            rel = (rel_here / d).as_posix()
            if d.startswith("."):
                continue
            if odd_name(d):
                skipped.append(Skipped(_printable(rel), "odd folder name (control characters or undecodable bytes)"))
            elif p.is_symlink():
                skipped.append(Skipped(rel, "symbolic link to a folder (not followed)"))
            elif not _inside(p.resolve(), out_root):
                keep.append(d)
        dirs[:] = keep
        for name in sorted(files):
            if name.startswith("."):
                continue
            p = here / name
            rel = (rel_here / name).as_posix()
            if odd_name(name):
                skipped.append(Skipped(_printable(rel), "odd file name (control characters or undecodable bytes)"))
                continue
            if p.is_symlink():
                target = p.resolve()
                if not _inside(target, in_root) or _inside(target, out_root):
                    skipped.append(Skipped(rel, "symbolic link pointing outside IN_DIR"))
                    continue
            if not p.is_file():  # FIFOs, sockets, devices: opening one could block or read forever
                skipped.append(Skipped(rel, "not a regular file"))
                continue
            ext = p.suffix.lower()
            if ext in readable or identify(p):
                found.append((rel, p))
            elif ext in UNREADABLE_IMAGE_SUFFIXES:
                skipped.append(Skipped(rel, f"{ext} images cannot be read by Pillow; convert them to PNG first"))
            else:
                ignored += 1
    candidates, conflicts = _assign_outputs(found, suffix, single_class)
    return candidates, skipped + conflicts, ignored


def _assign_outputs(found, suffix: str, single_class: bool) -> tuple[list[Candidate], list[Skipped]]:
    by_out: dict[str, list[str]] = defaultdict(list)
    for rel, _ in found:
        by_out[str(PurePosixPath(rel).with_suffix(suffix))].append(rel)
    out_of: dict[str, str] = {}
    for out, rels in by_out.items():
        for rel in rels:
            out_of[rel] = out if len(rels) == 1 else rel + suffix
    counts = defaultdict(int)
    for out in out_of.values():
        counts[out] += 1
    candidates, conflicts = [], []
    for rel, p in sorted(found):
        out = out_of[rel]
        if counts[out] > 1:
            conflicts.append(Skipped(rel, f"output name {out} is claimed by another input"))
            continue
        parts = PurePosixPath(rel).parts
        label = SINGLE_CLASS if single_class else (parts[0] if len(parts) > 1 else ROOT_CLASS)
        candidates.append(Candidate(rel, p, out, label))
    return candidates, conflicts


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


def safe_output_path(out_root: Path, rel: str) -> Path:
    """``out_root / rel`` after checking that writing there stays inside ``out_root``."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or not pure.parts:
        raise UnsafePath(f"output path {_printable(rel)!r} is not relative")
    for part in rel.split("/"):  # the raw components: PurePosixPath would hide "." and "//"
        if part == "":
            raise UnsafePath(f"output path {_printable(rel)!r} has an empty component")
        if part in (".", "..") or "\\" in part or "\x00" in part or odd_name(part):
            raise UnsafePath(f"output path {_printable(rel)!r} has an unsafe component {_printable(part)!r}")
    cur = out_root
    for part in pure.parts[:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise UnsafePath(f"{cur} is a symbolic link: writing through it could leave OUT_DIR")
        if cur.exists() and not cur.is_dir():
            raise UnsafePath(f"{cur} exists and is not a folder")
    dest = cur / pure.parts[-1]
    if dest.is_symlink():
        raise UnsafePath(f"{dest} is a symbolic link: not replacing it")
    if dest.is_dir():
        raise UnsafePath(f"{dest} is a folder")
    if not _inside(dest.resolve(), out_root):
        raise UnsafePath(f"{dest} resolves outside OUT_DIR")
    return dest

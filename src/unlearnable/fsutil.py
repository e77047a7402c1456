"""Atomic file and directory writes: a reader never sees a half-written artefact."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` on success.

    On an exception the temporary file is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """Compressed npz written atomically (numpy writes no pickles for plain arrays)."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def prepare_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Check that ``out`` may be written; with ``overwrite`` an existing one is removed.

    Nothing is created here: writers build their output in a temporary sibling and
    rename it into place, so a failed run leaves no partial output at ``out``.
    """
    from .errors import UnlearnableError

    out = Path(out)
    if out.exists() and not (out.is_dir() and is_empty_dir(out)):
        if not overwrite:
            raise UnlearnableError(f"output directory is not empty: {out} (pass --overwrite to replace it)")
        if not out.is_dir():
            raise UnlearnableError(f"output path exists and is not a directory: {out}")
    return out


def replace_dir(src: Path, dest: Path) -> None:
    """Move the finished directory ``src`` onto ``dest`` (removing an old ``dest``)."""
    dest = Path(dest)
    if dest.exists():
        trash = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, trash)
        os.replace(src, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike, busy: str):
    """Hold an exclusive ``flock`` on ``lock_file`` (created; never through a symlink) for the block.

    The OS releases it when the process dies, so a killed run never leaves a stale lock.
    ``busy`` is the one-line error when another process holds it.
    """
    import fcntl

    from .errors import UnlearnableError
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise UnlearnableError(f"cannot create the lock file {lock_file}: {e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UnlearnableError(busy) from None
        yield
    finally:
        os.close(fd)

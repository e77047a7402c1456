"""Atomic file and directory writes: a reader never sees a half-written artefact."""

from __future__ import annotations

import contextlib
import glob
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
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a shared output wants the usual mode
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(dest: str | os.PathLike, tag: str = "writing") -> Path:
    """A new hidden folder ``.NAME.TAG-XXXX`` beside ``dest``, with the umask's usual mode
    (mkdtemp makes 0700), where a writer builds ``dest`` before renaming it into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{tag}-", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def remove_stale_temp_dirs(dest: str | os.PathLike, tag: str = "writing") -> None:
    """Remove the ``make_temp_dir`` folders of ``dest`` that a killed writer left behind.

    Call it only while holding the output (a finished write renames its folder away, so
    any left is from a dead process)."""
    dest = Path(dest)
    if dest.parent.is_dir():
        for p in dest.parent.glob(f".{glob.escape(dest.name)}.{tag}-*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


def write_json(path: str | os.PathLike, obj) -> None:
    """Strict JSON (NaN or infinity is an error, not a non-standard token), written atomically."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"refusing to write {path}: {e} (a non-finite number is a bug upstream)") from None
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


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


def tool_output_kind(path: str | os.PathLike) -> str | None:
    """What this tool wrote in the folder ``path``, read from its own manifest; None when
    nothing says the folder is ours (then ``--overwrite`` must not replace it)."""
    path = Path(path)

    def read(name):
        f = path / name
        try:
            return json.loads(f.read_text()) if f.is_file() and not f.is_symlink() else None
        except (OSError, ValueError):
            return None

    manifest = read("manifest.json")
    if isinstance(manifest, dict) and manifest.get("format") == "unlearnable-poisoned":
        return "protected dataset"
    if isinstance(read("model.json"), dict) and isinstance(read("metrics.json"), dict):
        return "trained victim"
    results = read("results.json")
    if isinstance(results, dict) and {"method", "clean_acc", "poisoned_acc"} <= set(results):
        return "demo"
    settings = read("settings.json")
    if isinstance(settings, dict) and {"data", "subset", "preset", "victim", "mi_slices"} <= set(settings):
        return "comparison"
    if isinstance(read("evaluate.json"), dict):
        return "evaluation"
    return None


def check_apart(out: str | os.PathLike, inputs=()) -> None:
    """Refuse an output that is, lies inside, or contains one of the ``inputs`` (paths;
    ``None`` and paths that do not exist are skipped): writing it would change the data
    it reads, and replacing it would delete that data."""
    from .errors import UnlearnableError

    target = Path(out).resolve()
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        src = Path(given).resolve()
        if target == src or src in target.parents:
            raise UnlearnableError(f"output {out} is inside the input {given}; choose an output outside it")
        if target in src.parents:
            raise UnlearnableError(f"output {out} contains the input {given}; choose another output")


def check_output_parent(out: str | os.PathLike) -> None:
    """Refuse, before any work, an output whose nearest existing ancestor is not a folder
    this process may write in (a file in the path, a read-only folder)."""
    from .errors import UnlearnableError

    out = Path(out)
    anc = out.absolute().parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UnlearnableError(f"cannot write {out}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UnlearnableError(f"cannot write {out}: no permission to write in {anc}")


def check_output_file(out: str | os.PathLike, inputs=()) -> Path:
    """Check, before any work, that a result file may be written at ``out``: it is new or
    a regular file (never a folder, a device node, a pipe or a link to one), its folder can
    be written, and it is none of the ``inputs``."""
    from .errors import UnlearnableError

    out = Path(out)
    check_apart(out, inputs)
    if out.exists() or out.is_symlink():
        if out.is_dir():
            raise UnlearnableError(f"output {out} is a folder; give a file name")
        if not out.is_file() or out.is_symlink():
            raise UnlearnableError(f"output {out} exists and is not a regular file; refusing to replace it")
    check_output_parent(out)
    return out


def check_output_folder(out: str | os.PathLike, inputs=(), what: str = "output") -> Path:
    """Check, before any work, that a folder may be written at ``out``: none of the
    ``inputs`` (:func:`check_apart`), not a file or a link, and its parent writable."""
    from .errors import UnlearnableError

    out = Path(out)
    check_apart(out, inputs)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UnlearnableError(f"{what} {out} exists and is not a folder")
    check_output_parent(out)
    return out


def prepare_output_dir(out: str | os.PathLike, overwrite: bool, inputs=()) -> Path:
    """Check, before any work, that the output folder ``out`` may be written.

    It must be new, empty, or (with ``overwrite``) a folder this tool wrote
    (:func:`tool_output_kind`); never a file, a link, or the input data or a place inside
    it (``inputs``, see :func:`check_apart`). Nothing is created or removed here: writers
    build their output in a temporary sibling and rename it into place, so a failed run
    leaves no partial output at ``out``.
    """
    from .errors import UnlearnableError

    out = Path(out)
    if out.is_symlink():
        raise UnlearnableError(f"output {out} is a symbolic link; give the folder itself")
    check_output_folder(out, inputs)
    if out.is_dir() and not is_empty_dir(out):
        kind = tool_output_kind(out)
        if kind is None:
            raise UnlearnableError(f"output folder {out} is not empty and was not written by unlearnable; "
                                   f"choose another (`overwrite` only replaces this tool's own outputs)")
        if not overwrite:
            raise UnlearnableError(f"output folder {out} already holds a {kind} (pass `overwrite` to replace it)")
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

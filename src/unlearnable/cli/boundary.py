"""The command line's one error boundary: every failure ends as one line on stderr."""

from __future__ import annotations

import re
import sys

from ..errors import UnlearnableError


def guarded(run, where: str = "", flags: dict | None = None) -> int:
    """The CLI's one error boundary: run ``run()`` and turn every failure into one line.

    Expected failures, exit 2: :class:`UnlearnableError` (bad input, named by the library)
    and ``OSError`` (permission, not a folder, no space left: the file and the reason).
    Ctrl-C: exit 130. Anything else is a bug: one line saying so with the path of a file
    holding the traceback, exit 1 (a user never sees a raw traceback, and no bug is hidden).
    ``SystemExit`` passes through (a command may choose its exit status).

    ``flags`` maps parameter names to the command's flags: a library message that names a
    parameter in backticks (`overwrite`) is printed with the flag (--overwrite).
    """
    try:
        run()
    except UnlearnableError as e:
        return _fail(f"{where}{as_flags(str(e), flags or {})}")
    except KeyboardInterrupt:
        sys.stderr.write("unlearnable: interrupted\n")
        return 130
    except OSError as e:
        return _fail(f"{where}{describe_os_error(e)}")
    except MemoryError:
        return _fail(f"{where}out of memory (try a smaller --batch-size or --subset)")
    except Exception:  # noqa: BLE001 - the boundary: everything else is reported as a bug
        path = _save_traceback()
        sys.stderr.write(f"unlearnable: internal error (a bug): {where}{_last_line()}; "
                         f"traceback in {path}\n")
        return 1
    return 0


def as_flags(message: str, flags: dict) -> str:
    """``message`` with each backticked parameter name that the command has a flag for
    replaced by that flag; other backticked names are left as they are."""
    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", lambda m: flags.get(m.group(1), m.group(0)), message)


def _fail(message: str) -> int:
    sys.stderr.write(f"unlearnable: error: {' '.join(str(message).split())}\n")  # one line, whatever it holds
    return 2


def describe_os_error(e: OSError) -> str:
    """``cannot write FILE: No space left on device`` style, naming the file(s)."""
    import errno
    reason = e.strerror or str(e) or type(e).__name__
    files = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    if e.errno == errno.ENOSPC:
        return f"no space left on device while writing {files or 'the output'}; free some space and rerun"
    return f"{files}: {reason}" if files else reason


def _last_line() -> str:
    exc = sys.exc_info()[1]
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def _save_traceback() -> str:
    """Write the current exception's traceback (with the command line and versions) to a
    new file in the temp folder and return its path; never raises."""
    import os
    import platform
    import tempfile
    import time
    import traceback
    try:
        fd, path = tempfile.mkstemp(prefix=f"unlearnable-bug-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"command: {' '.join(sys.argv)}\npython {platform.python_version()} on {platform.platform()}\n")
            try:
                from importlib.metadata import version
                f.write(f"unlearnable {version('unlearnable')}, torch {version('torch')}\n\n")
            except Exception:  # noqa: BLE001 - versions are a courtesy
                f.write("\n")
            traceback.print_exc(file=f)
        return path
    except Exception:  # noqa: BLE001 - the report of a bug must not itself crash
        return "(could not be written)"

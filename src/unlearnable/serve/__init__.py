"""``unlearnable serve``: a local web page for protect and verify (docs/protect.md).

:func:`serve` binds the socket, prints the address with its token and runs the
application (:mod:`.app`) over the jobs in ``workdir`` (:mod:`.jobs`); uploads are taken
by :mod:`.uploads`, previews and the download made by :mod:`.views`, and each run happens
in a worker process (:mod:`.worker`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import socket
import sys
from pathlib import Path

from ..errors import UnlearnableError
from .jobs import Jobs, Options

__all__ = ["Options", "default_workdir", "is_loopback", "serve"]


def default_workdir() -> Path:
    """``$XDG_DATA_HOME/unlearnable/serve`` (``~/.local/share/unlearnable/serve``)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "unlearnable" / "serve"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UnlearnableError(f"cannot listen on {host}:{port}: {e.strerror or e}"
                               + (" (another program uses that port; choose another `port`, or 0 for any free one)"
                                  if e.errno == errno.EADDRINUSE else "")) from None
    sock.listen(64)
    return sock


def serve(workdir: str | os.PathLike | None = None, *, port: int = 8765, host: str = "127.0.0.1",
          allow_remote: bool = False, options: Options | None = None, token: str | None = None,
          out=sys.stdout) -> None:
    """Serve the page until interrupted. Only the loopback interface unless ``allow_remote``
    (anyone who can reach the address and has the token can then use this machine's files
    through the page's folder option)."""
    import uvicorn

    from .app import create_app
    loopback = is_loopback(host)
    if not loopback and not allow_remote:
        raise UnlearnableError(f"`host` {host} is reachable from other machines; the page can read folders on this "
                               f"one, so this needs `allow_remote`")
    if not loopback:
        sys.stderr.write(f"unlearnable: warning: serving on {host}: anyone who can reach it and has the address "
                         f"with its token can read folders on this machine through the page\n")
    workdir = Path(workdir) if workdir else default_workdir()
    jobs = Jobs(workdir, options)
    token = token or secrets.token_urlsafe(24)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"unlearnable: open http://{shown}:{sock.getsockname()[1]}/?token={token}\n"
          f"unlearnable: jobs in {jobs.root} (Ctrl-C stops; an unfinished job continues at the next start)",
          file=out, flush=True)
    config = uvicorn.Config(create_app(jobs, token, loopback=loopback), log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])

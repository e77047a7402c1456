"""``unlearnable serve``: the local web page for protect and verify."""

from __future__ import annotations

from .common import port, positive_int


def register(sub) -> None:
    s = sub.add_parser("serve", help="a local web page to protect and check images (no terminal needed)",
                       description="Start a web page on this computer for protect and verify, and print its "
                                   "address (with a random access token). See docs/protect.md.")
    s.add_argument("--port", type=port, default=8765, help="port (default 8765; 0: any free port)")
    s.add_argument("--workdir", metavar="DIR",
                   help="where jobs, uploads and outputs live (default ~/.local/share/unlearnable/serve)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this computer only)")
    s.add_argument("--allow-remote", action="store_true",
                   help="allow a --host that other machines can reach (they could read folders on this one)")
    s.add_argument("--reference", default="fashion-mnist", help="other classes to contrast with (as in protect)")
    s.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    s.add_argument("--max-file-mb", type=positive_int, default=50, help="largest image (or zip entry) taken, in MiB")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args):
    from ..serve import Options, serve
    from ..serve.uploads import Limits
    options = Options(reference=args.reference, device=args.device,
                      limits=Limits(file_bytes=args.max_file_mb * 2**20))
    serve(args.workdir, port=args.port, host=args.host, allow_remote=args.allow_remote, options=options)

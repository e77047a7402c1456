"""``unlearnable <command>``: a thin layer over the library.

Every user error ends as one line on stderr (``unlearnable: error: ...``) and exit 2.

This package is the only place that parses a command line: ``common`` (argument types,
the parser class, shared flag groups), ``boundary`` (the error boundary) and one module
per command group, each with ``register(sub)`` adding its sub-parser(s) with
``set_defaults(func=...)``. ``distributed`` is the command line of
``torchrun -m unlearnable.distributed``.
"""

from __future__ import annotations

import argparse

from .boundary import describe_os_error, guarded
from .common import Parser

__all__ = ["build_parser", "describe_os_error", "guarded", "main"]


def build_parser() -> argparse.ArgumentParser:
    # The command modules are imported here, not at the top: ``import unlearnable.cli``
    # stays cheap, and the library they name is only loaded to build the parser.
    from . import compare, demo, measure, poison, protect, run, serve, train

    p = Parser(prog="unlearnable", description="Make image data unlearnable, test the protection, measure why.")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or status lines")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (demo, poison, measure, train, protect, serve, run, compare):  # the order of --help
        module.register(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..progress import set_quiet
    if args.quiet:
        set_quiet(True)
    return guarded(lambda: args.func(args), flags=args.option_flags)


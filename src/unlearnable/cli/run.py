"""``unlearnable run CONFIG.yaml`` and ``unlearnable report RUN_DIR``."""

from __future__ import annotations

import sys


def register(sub) -> None:
    r = sub.add_parser("run", help="run an experiment spec (attacks x victims x protocols/defenses x seeds, MI)")
    r.add_argument("config", metavar="CONFIG.yaml", help="experiment spec (see docs/experiments.md)")
    r.add_argument("--out", metavar="RUN_DIR", help="run directory (default: the spec's 'out', else runs/<name>)")
    r.add_argument("--dry-run", action="store_true", help="print the plan and a time estimate; run nothing")
    r.add_argument("--devices", help="comma list of devices, one worker each (e.g. cuda:0,cuda:1); "
                   "default: the spec's, else every GPU when device is cuda")
    r.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="tables (Markdown, CSV) and figures (PNG) of a run directory")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--victim", help="main victim of Tables 1, 4, 5, 16, 20 and Figures 1, 3, 6 (default: the spec's)")
    p.add_argument("--protocol", help="main protocol (default: the spec's, st)")
    p.add_argument("--estimator", help="MI estimator of Table 13 and Figures 2, 3 (default: the spec's)")
    p.set_defaults(func=cmd_report)


def cmd_run(args) -> None:
    from ..errors import UnlearnableError
    from ..experiments.plan import format_seconds
    from ..experiments.runner import run_experiment
    s = run_experiment(args.config, args.out, dry_run=args.dry_run, devices=args.devices)
    if args.dry_run:
        return
    print(f"{s.done} cells run, {s.cached} reused, {s.unavailable} unavailable, {s.blocked} blocked, "
          f"{len(s.failed)} failed in {format_seconds(s.seconds)}; results: {s.run_dir / 'results.jsonl'}")
    print(f"next: unlearnable report {s.run_dir}")
    sys.stdout.flush()
    if s.failed:
        t, err = s.failed[0]
        raise UnlearnableError(f"{len(s.failed)} cells failed (first: {t.describe()}: {err}); details in "
                               f"{s.run_dir / 'failures.jsonl'}; rerun to retry them")


def cmd_report(args) -> None:
    from ..experiments.report import write_report
    main = {k: getattr(args, k) for k in ("victim", "protocol", "estimator") if getattr(args, k)}
    res = write_report(args.run_dir, figures=not args.no_figures, main=main)
    print(res["summary"])
    print(f"report: {res['dir']} ({', '.join(res['files'])})")

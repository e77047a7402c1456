"""``unlearnable protect`` and ``unlearnable verify``.

Exit status of ``protect``: 0 when every readable image was protected; 1 when some files
were skipped (listed on stderr and in manifest.json) unless ``--skip-bad``; 2 on an
error (one line); 130 on Ctrl-C (finished images are kept; rerun to continue).
"""

from __future__ import annotations

import json
import sys

from ..options import NOT_GIVEN
from ..protect.engine import STRENGTHS
from ..protect.images import FORMATS
from .common import eps_255, positive_int, ratio, seed


def register(sub) -> None:
    eps, positive = eps_255, positive_int
    p = sub.add_parser("protect", help="protect every image of a folder (MI-UE), resumably, as lossless PNG",
                       description="Protect every image under IN_DIR into OUT_DIR (same relative paths and stems, "
                                   "original size, PNG). Rerun the same command to resume. See docs/protect.md.")
    p.add_argument("in_dir", metavar="IN_DIR", help="folder of images (searched recursively; never modified)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (new, empty, or an earlier protect output)")
    p.add_argument("--strength", choices=list(STRENGTHS), default="mid",
                   help="preset: low (4/255, 5 epochs), mid (8/255, 10 epochs; default), high (12/255, 20 epochs)")
    p.add_argument("--single-class", action="store_true",
                   help="all images are one class (one owner's photos) instead of one class per sub-folder")
    p.add_argument("--reference", default="fashion-mnist",
                   help="other classes to contrast with: fashion-mnist (embedded, default) or a folder/.npz spec")
    p.add_argument("--reference-per-class", type=positive, help="reference images per class (default 200)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--eps", type=eps, help="expert: L-inf budget in 1/255 units (overrides the strength)")
    p.add_argument("--steps", type=positive, help="expert: PGD steps per epoch")
    p.add_argument("--epochs", type=positive, help="expert: min-min epochs per batch of images")
    p.add_argument("--batch-size", dest="unit_size", type=positive,
                   help="images optimised and written together (default 64; Ctrl-C loses at most one batch)")
    p.add_argument("--working-size", type=positive, help="expert: working resolution in pixels (default 32)")
    p.add_argument("--model", help="expert: surrogate model (registry name, default cnn)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the surrogate (perturbation stays fp32)")
    p.add_argument("--format", dest="fmt", choices=list(FORMATS), default="png",
                   help="output format: png (default) or tiff are lossless; jpeg/webp need --force-lossy")
    p.add_argument("--force-lossy", action="store_true", help="allow a lossy --format (weakens the protection)")
    p.add_argument("--skip-bad", action="store_true", help="exit 0 even when some files were skipped")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line instead of text")
    # the preset's overrides: a flag left out is NOT_GIVEN (the strength's value), not None
    p.set_defaults(func=cmd_protect, **{k: NOT_GIVEN for k in ("reference_per_class", "eps", "steps", "epochs",
                                                                "unit_size", "working_size", "model")})

    v = sub.add_parser("verify", help="train quick victims on original vs protected images and report the gap",
                       description="Check a protected folder: victims trained on the original and on the "
                                   "protected images (plus the reference classes) are tested on held-out clean "
                                   "images. See docs/protect.md.")
    v.add_argument("in_dir", metavar="IN_DIR", help="the original images")
    v.add_argument("out_dir", metavar="OUT_DIR", help="the folder written by 'unlearnable protect'")
    v.add_argument("--reference", help="other classes (default: the one recorded in OUT_DIR/manifest.json)")
    v.add_argument("--reference-per-class", type=positive, help="reference training images per class")
    v.add_argument("--out", required=True, metavar="REPORT.json", help="write the full report here")
    v.add_argument("--holdout", type=ratio, default=0.25, help="fraction of each class held out (default 0.25)")
    v.add_argument("--folds", type=positive, default=1, help="K >= 2: K-fold instead of one held-out part")
    v.add_argument("--epochs", type=positive, default=10, help="victim epochs (default 10)")
    v.add_argument("--jpeg-quality", type=positive, default=20, help="JPEG quality of the JPEG row (default 20)")
    v.add_argument("--size", type=positive, help="victim input size (default: the protect working size)")
    v.add_argument("--no-mi", action="store_true", help="skip the MI gap")
    v.add_argument("--no-attackers", action="store_true", help="skip the early-stopping and fine-tuned-prior "
                   "victims (faster; the verdict then covers the scratch victim and the filters only)")
    v.add_argument("--seed", type=seed, default=0)
    v.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    v.set_defaults(func=cmd_verify)


def cmd_protect(args):
    from ..protect.folder import protect_folder
    r = protect_folder(args.in_dir, args.out_dir, strength=args.strength, single_class=args.single_class,
                       reference=args.reference, seed=args.seed, eps=args.eps, steps=args.steps, epochs=args.epochs,
                       unit_size=args.unit_size, working_size=args.working_size,
                       reference_per_class=args.reference_per_class, model=args.model, device=args.device,
                       bf16=args.bf16, fmt=args.fmt, force_lossy=args.force_lossy)
    for s in r.skipped:
        sys.stderr.write(f"unlearnable: skipped {s.rel}: {s.reason}\n")
    print(json.dumps(r.to_dict()) if args.json else r.summary())
    if r.skipped and not args.skip_bad:
        sys.stderr.write(f"unlearnable: {len(r.skipped)} file(s) skipped (listed above and in manifest.json); "
                         f"pass --skip-bad to exit 0 anyway\n")
        raise SystemExit(1)


def cmd_verify(args):
    from ..fsutil import check_output_file
    from ..protect.verify import format_report, verify_folder
    check_output_file(args.out, inputs=[args.in_dir])  # IN_DIR is never modified; checked before any training
    report = verify_folder(args.in_dir, args.out_dir, reference=args.reference, out=args.out, holdout=args.holdout,
                           folds=args.folds, epochs=args.epochs, jpeg_quality=args.jpeg_quality,
                           reference_per_class=args.reference_per_class, size=args.size, seed=args.seed,
                           device=args.device, mi=not args.no_mi,
                           attackers=not args.no_attackers)
    print(format_report(report))
    print(f"report: {args.out}")

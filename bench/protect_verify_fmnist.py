"""The verify table of the note: one Fashion-MNIST class as "the user's images", the other
nine classes as the reference set (the paper's one-class setting, Appendix G.1).

Writes OUT/user/ (N PNGs of class CLS from the training split), OUT/rest.npz (the other
classes' train and test splits, relabelled), runs ``protect_folder`` on OUT/user with the
reference OUT/rest.npz at the native 28 px, then ``verify_folder``, and prints the verify
table, the verdict and the times (also in OUT/report.json).

    python bench/protect_verify_fmnist.py [--cls 0] [--n 500] [--strength mid] [--out runs/protect-fmnist]
                                          [--batch-size 128] [--reference-per-class 200] [--victim-epochs 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from unlearnable.data import load_dataset
from unlearnable.fsutil import save_npz
from unlearnable.protect import format_report, protect_folder, verify_folder


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cls", type=int, default=0, help="the class playing the user's images (default 0, t-shirt)")
    ap.add_argument("--n", type=int, default=500, help="user images (default 500)")
    ap.add_argument("--strength", default="mid")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--reference-per-class", type=int, default=200)
    ap.add_argument("--victim-epochs", type=int, default=10)
    ap.add_argument("--folds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/protect-fmnist")
    args = ap.parse_args()

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    user = out / "user"
    user.mkdir(parents=True)
    splits = load_dataset("fashion-mnist")
    tr, te = splits.train, splits.test
    rng = np.random.default_rng(args.seed)
    mine = rng.permutation(np.flatnonzero(tr.labels == args.cls))[:args.n]
    for i in mine:
        Image.fromarray(tr.images[i, ..., 0]).save(user / f"{int(i):05d}.png")
    others = [c for c in range(tr.num_classes) if c != args.cls]
    remap = {c: j for j, c in enumerate(others)}

    def rest(ds):
        keep = np.isin(ds.labels, others)
        return ds.images[keep], np.array([remap[int(c)] for c in ds.labels[keep]], dtype=np.int64)

    (xtr, ytr), (xte, yte) = rest(tr), rest(te)
    save_npz(out / "rest.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
             class_names=np.array([tr.class_names[c] for c in others]))

    t0 = time.time()
    r = protect_folder(user, out / "protected", strength=args.strength, single_class=True,
                       reference=str(out / "rest.npz"), seed=args.seed, batch_size=args.batch_size,
                       working_size=28, reference_per_class=args.reference_per_class, device=args.device)
    t_protect = time.time() - t0
    print(r.summary())
    t0 = time.time()
    rep = verify_folder(user, out / "protected", out=out / "report.json", epochs=args.victim_epochs,
                        folds=args.folds, seed=args.seed, device=args.device)
    t_verify = time.time() - t0
    print(f"user images: {len(mine)} of class {args.cls} ({tr.class_names[args.cls]}); strength {args.strength}")
    print(format_report(rep))
    print(json.dumps({"protect_s": round(t_protect, 1), "verify_s": round(t_verify, 1)}))


if __name__ == "__main__":
    main()

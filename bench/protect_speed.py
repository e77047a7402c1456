"""Speed and peak memory of ``unlearnable protect`` per strength, for a 512x512 and a
4000x3000 photo. Prints one JSON line.

For each (size, strength) a child process protects a folder of ``--images`` JPEG photos
(scikit-learn's sample photos, resized to the size; a camera-like input) with the
embedded Fashion-MNIST reference, and reports:
  - seconds_per_image: wall time of ``protect_folder`` / images (one unit of all images),
  - optimise_s: the unit's MI-UE optimisation at the working resolution,
  - write_s_per_image: per image, everything at full resolution (decode twice, downsample,
    upsample + round + clip, PNG encode, SHA-256, L-inf/PSNR/SSIM),
  - peak_rss_mib: the child's peak resident memory (getrusage; includes about
    ``baseline_rss_mib`` of interpreter + torch measured before protecting),
  - tracemalloc_peak_mib: peak of Python/numpy allocations during protect (torch's
    allocations are not traced by tracemalloc).

    python bench/protect_speed.py [--strengths low,mid,high] [--sizes 512x512,4000x3000] [--images 2]
                                  [--device cpu] [--reference fashion-mnist]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def case(size: str, strength: str, images: int, device: str, reference: str) -> dict:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    import unlearnable.protect.folder as folder
    from unlearnable.progress import set_quiet

    set_quiet(True)
    w, h = (int(v) for v in size.split("x"))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timing = {"optimise": 0.0}
    real = folder.optimise_unit

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            timing["optimise"] += time.perf_counter() - t

    folder.optimise_unit = timed
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        photos = load_sample_images().images
        for i in range(images):
            Image.fromarray(np.asarray(photos[i % 2])[:, ::(-1) ** (i // 2)]).resize(
                (w, h), Image.Resampling.BICUBIC).save(src / f"photo{i}.jpg", quality=95)
        tracemalloc.start()
        t = time.perf_counter()
        r = folder.protect_folder(src, Path(tmp) / "out", strength=strength, single_class=True,
                                  reference=reference, batch_size=images, device=device)
        total = time.perf_counter() - t
        peak_traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert r.protected == images, r.skipped
    return {"size": size, "strength": strength, "images": images, "seconds_per_image": round(total / images, 2),
            "optimise_s": round(timing["optimise"], 2),
            "write_s_per_image": round((total - timing["optimise"]) / images, 2),
            "linf_255": r.linf_255, "mean_psnr": r.mean_psnr, "mean_ssim": r.mean_ssim,
            "baseline_rss_mib": round(base_rss), "peak_rss_mib": round(resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024),
            "tracemalloc_peak_mib": round(peak_traced / 2 ** 20, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strengths", default="low,mid,high")
    ap.add_argument("--sizes", default="512x512,4000x3000")
    ap.add_argument("--images", type=int, default=2, help="images per folder (one unit)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reference", default="fashion-mnist")
    ap.add_argument("--case", nargs=2, metavar=("SIZE", "STRENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(case(*args.case, args.images, args.device, args.reference)))
        return
    rows = []
    t0 = time.time()
    for size in args.sizes.split(","):
        for strength in args.strengths.split(","):
            cmd = [sys.executable, __file__, "--case", size, strength, "--images", str(args.images),
                   "--device", args.device, "--reference", args.reference]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps({"results": rows, "threads": os.environ.get("OMP_NUM_THREADS"),
                      "load_avg": [round(x, 2) for x in os.getloadavg()],
                      "cpu": platform.processor() or platform.machine(),
                      "total_s": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()

"""Speed of the sliced-MI estimators: prints ONE JSON line.

Setting of the issue: n = 5000 samples per variable, d = 512 features, m = 2000 slices
(X isotropic Gaussian, Y = X + 0.5 Z; the true SMI is about 7.7e-4 nats). Each
estimator's ``estimate`` is timed on the projected (m, n) slices; projecting costs
``project_s`` once. Baselines in the same run: one ``numpy.histogram2d`` per slice for
the histogram, scikit-learn's ``mutual_info_regression`` per slice for KSG. The slow
baselines (and MINE) are timed on a subset of slices and scaled; the JSON says how many.

    python bench/mi_speed.py [--slices 2000] [--n 5000] [--dim 512] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from unlearnable.measure.estimators import KDEMI, KSGMI, MINEMI, HistogramMI, default_jobs  # noqa: E402
from unlearnable.measure.sliced import direction_pairs  # noqa: E402


def hist_loop(u: np.ndarray, v: np.ndarray, bins: int = 100) -> np.ndarray:
    """The reference: one numpy.histogram2d per slice, plug-in MI from its counts."""
    out = np.empty(len(u))
    for i in range(len(u)):
        c, _, _ = np.histogram2d(u[i], v[i], bins=bins)
        p = c / c.sum()
        pu, pv = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
        nz = p > 0
        out[i] = float((p[nz] * np.log(p[nz] / (pu @ pv)[nz])).sum())
    return out


def sklearn_ksg(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    from sklearn.feature_selection import mutual_info_regression
    return np.array([mutual_info_regression(u[i][:, None], v[i], n_neighbors=3, random_state=0)[0]
                     for i in range(len(u))])


CPU = {}


def timed(fn, *args, key=None):
    """Wall time of fn(*args); the process CPU time (all threads) goes into CPU[key]."""
    c, t = time.process_time(), time.perf_counter()
    r = fn(*args)
    wall = time.perf_counter() - t
    if key:
        CPU[key] = time.process_time() - c
    return r, wall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--slices", type=int, default=2000)
    ap.add_argument("--loop-slices", type=int, default=500, help="slices for the histogram2d loop")
    ap.add_argument("--sklearn-slices", type=int, default=40, help="slices for scikit-learn's KSG")
    ap.add_argument("--mine-slices", type=int, default=50, help="slices for MINE (trained together)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.dim, a.slices, a.loop_slices, a.sklearn_slices, a.mine_slices = 1000, 64, 200, 50, 5, 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.n, a.dim), dtype=np.float32)
    y = x + 0.5 * rng.standard_normal((a.n, a.dim), dtype=np.float32)
    theta, phi = direction_pairs(a.slices, a.dim, a.dim, seed=0)
    (u, v), project_s = timed(lambda: (theta @ x.T, phi @ y.T))
    m = a.slices
    res = {"n": a.n, "d": a.dim, "m": m, "workers": default_jobs(), "project_s": round(project_s, 3),
           "loadavg_start": round(os.getloadavg()[0], 2)}

    hist = HistogramMI()
    hist.estimate(u[:8], v[:8])  # warm-up
    hist_loop(u[:2], v[:2])
    r, t = timed(hist.estimate, u, v, key="hist")
    res["hist_slices_per_s"] = round(m / t, 1)
    k = min(a.loop_slices, m)
    r_loop, t_loop = timed(hist_loop, u[:k], v[:k], key="hist_loop")
    res["hist_loop_slices_per_s"] = round(k / t_loop, 1)
    res["hist_loop_slices_timed"] = k
    res["hist_vs_loop"] = round((m / t) / (k / t_loop), 2)
    res["hist_max_abs_diff_vs_loop"] = float(np.abs(r[:k] - r_loop).max())
    res["hist_smi"] = round(float(r.mean()), 5)

    ksg = KSGMI()
    ksg.estimate(u[:8], v[:8])
    r, t = timed(ksg.estimate, u, v, key="ksg")
    res["ksg_slices_per_s"] = round(m / t, 1)
    res["ksg_smi"] = round(float(r.mean()), 6)
    res["ksg_smi_se"] = round(float(r.std(ddof=1) / np.sqrt(m)), 6)
    k = min(a.sklearn_slices, m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sklearn_ksg(u[:1], v[:1])  # warm-up: imports outside the timing
        r_sk, t_sk = timed(sklearn_ksg, u[:k], v[:k], key="ksg_sklearn")
    res["ksg_sklearn_slices_per_s"] = round(k / t_sk, 1)
    res["ksg_sklearn_slices_timed"] = k
    res["ksg_vs_sklearn"] = round((m / t) / (k / t_sk), 2)

    kde = KDEMI()
    kde.estimate(u[:8], v[:8])
    r, t = timed(kde.estimate, u, v, key="kde")
    res["kde_slices_per_s"] = round(m / t, 1)
    res["kde_smi"] = round(float(r.mean()), 6)

    k = min(a.mine_slices, m)
    mine = MINEMI()
    r, t = timed(mine.estimate, u[:k], v[:k], key="mine")
    res["mine_slices_per_s"] = round(k / t, 2)
    res["mine_slices_timed"] = k
    res["mine_params"] = mine.get_params()
    res["mine_smi"] = round(float(r.mean()), 5)
    counts = {"hist": m, "hist_loop": min(a.loop_slices, m), "ksg": m, "ksg_sklearn": min(a.sklearn_slices, m),
              "kde": m, "mine": k}
    # CPU-seconds per slice do not depend on other load on the machine the way wall time does
    res["cpu_ms_per_slice"] = {key: round(CPU[key] / counts[key] * 1e3, 3) for key in CPU}
    res["loadavg_end"] = round(os.getloadavg()[0], 2)
    res["note"] = ("slices/s of estimate() on projected (m, n) slices; loop, sklearn and MINE timed on the "
                   "*_slices_timed first slices and scaled; cpu_ms_per_slice is process CPU time (all threads); a "
                   "loadavg above the core count means the wall-clock rates are depressed by other work; expected SMI ~7.7e-4 nats (hist is biased by ~0.48)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()

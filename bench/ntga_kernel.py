"""NTGA's time-t kernel regressor: the eigendecomposition form against the matrix-exponential
form, forward and backward through the NTK, in the same process. One JSON line.

    python bench/ntga_kernel.py [--sizes 512,1500] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from unlearnable.attacks.ntga import kernel_predict, kernel_predict_reference, relu_ntk


def step_seconds(fn, xb, xv, yb, yv, t):
    x = xb.clone().requires_grad_(True)
    t0 = time.perf_counter()
    kw = dict(depth=1, w_var=2.0, b_var=0.01)
    F.cross_entropy(fn(relu_ntk(x, x, **kw), relu_ntk(xv, x, **kw), yb, t), yv).backward()
    return time.perf_counter() - t0, x.grad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="512,1500")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    xv = torch.rand(1024, 784, dtype=torch.float64, generator=gen)
    yv = torch.randint(0, 10, (1024,), generator=gen)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        xb = torch.rand(n, 784, dtype=torch.float64, generator=gen)
        yb = F.one_hot(torch.randint(0, 10, (n,), generator=gen), 10).double()
        eig_s, g = step_seconds(kernel_predict, xb, xv, yb, yv, 64.0)
        ref_s, g_ref = step_seconds(kernel_predict_reference, xb, xv, yb, yv, 64.0)
        rel = float((g - g_ref).abs().max() / g_ref.abs().max())
        rows.append({"block": n, "eigh_s": round(eig_s, 2), "matrix_exp_s": round(ref_s, 2),
                     "speedup": round(ref_s / eig_s, 1), "grad_max_rel_diff": float(f"{rel:.2e}")})
    print(json.dumps({"bench": "ntga_kernel", "threads": args.threads, "val": 1024, "depth": 1, "t": 64.0,
                      "load": os.getloadavg()[0], "rows": rows}))


if __name__ == "__main__":
    main()

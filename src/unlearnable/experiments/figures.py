"""The paper's figures from a run directory (matplotlib, Agg backend, PNG).

- fig1  each estimator's MI against the histogram's, one point per data (clean, attacks)
- fig2  acc gap and MI gap against victim depth, one panel per attack
- fig3  class-averaged log det / d of the poisoned-feature covariance against MI
- fig4  clean / noise / poisoned image grid (noise rescaled to the grey range per image:
        0.5 + delta / (2 max|delta|), so the pattern is visible whatever the budget)
- fig6  learning curves (train accuracy solid, clean test accuracy dashed), main victim
- fig_ratio  accuracy against the poisoned fraction (when the run has ratio cells)

Points are means over seeds, error bars one standard deviation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..fsutil import atomic_path
from .run_view import PCT, RunView, depth_sorted, mean_std, ratio_kw, ratio_series, test_acc_of


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png")
    _plt().close(fig)


def _colors(n):
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _main_kw(view: RunView) -> dict:
    return {"victim": view.main["victim"], "protocol": view.main["protocol"], "defense": "none"}


def fig1(view: RunView, path: Path) -> bool:
    others = [e for e in view.estimators if e != "hist"]
    if "hist" not in view.estimators or not others:
        return False
    kw = _main_kw(view)
    hist = {a: mean_std(view.values("mi", a, "mean", **kw, estimator="hist")) for a in view.plain}
    if all(h[2] == 0 for h in hist.values()):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(others), figsize=(4.2 * len(others), 4), squeeze=False)
    cols = _colors(len(view.plain))
    for ax, est in zip(axes[0], others):
        for a, c in zip(view.plain, cols):
            ym, ys, n = mean_std(view.values("mi", a, "mean", **kw, estimator=est))
            xm, xs, nx = hist[a]
            if n == 0 or nx == 0:
                continue
            marker = "^" if a == "clean" else ("s" if a.startswith("mi-ue") else "o")
            ax.errorbar(xm, ym, xerr=0 if math.isnan(xs) else xs, yerr=0 if math.isnan(ys) else ys, fmt=marker,
                        color=c, ms=7, capsize=2, label=a)
            ax.annotate(a, (xm, ym), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xlabel("sliced MI, histogram (nats)")
        ax.set_ylabel(f"sliced MI, {est} (nats)")
        ax.set_title(f"{est} vs histogram")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Figure 1: MI between clean and poisoned features, victim {kw['victim']}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return True


def fig2(view: RunView, path: Path) -> bool:
    p, est = view.main["protocol"], view.main["estimator"]
    vs = [v for v in depth_sorted(view, view.victims)
          if view.planned("victim", "clean", victim=v, protocol=p, defense="none")]
    attacks = view.plain[1:]
    if len(vs) < 2 or not attacks:
        return False
    plt = _plt()
    ncol = min(4, len(attacks))
    nrow = -(-len(attacks) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
    x = np.arange(len(vs))
    drawn = False
    for i, a in enumerate(attacks):
        ax = axes[i // ncol][i % ncol]
        kws = [{"victim": v, "protocol": p, "defense": "none"} for v in vs]
        acc = [mean_std(view.gap("victim", a, test_acc_of, **kw)) for kw in kws]
        mi = [mean_std(view.gap("mi", a, "mean", **kw, estimator=est)) for kw in kws]
        am = np.array([m for m, _, _ in acc]) * PCT
        asd = np.nan_to_num(np.array([s for _, s, _ in acc])) * PCT
        ax.bar(x, np.nan_to_num(am), yerr=asd, color="tab:blue", alpha=0.7, capsize=2, label="acc gap (%)")
        ax.set_ylabel("acc gap (%)", color="tab:blue", fontsize=8)
        ax2 = ax.twinx()
        mm = np.array([m for m, _, _ in mi])
        if np.isfinite(mm).any():
            msd = np.nan_to_num(np.array([s for _, s, _ in mi]))
            ax2.errorbar(x, mm, yerr=msd, color="tab:orange", marker="o", capsize=2, label=f"MI gap ({est})")
            ax2.set_ylabel(f"MI gap, {est} (nats)", color="tab:orange", fontsize=8)
        drawn = drawn or np.isfinite(am).any()
        ax.set_xticks(x)
        ax.set_xticklabels(vs, rotation=30, fontsize=7)
        ax.set_title(a, fontsize=9)
        ax.axhline(0, color="grey", lw=0.5)
    for j in range(len(attacks), nrow * ncol):
        axes[j // ncol][j % ncol].axis("off")
    fig.suptitle(f"Figure 2: accuracy gap and MI gap against victim depth ({p})", fontsize=10)
    fig.tight_layout()
    if not drawn:
        plt.close(fig)
        return False
    _save(fig, path)
    return True


def fig3(view: RunView, path: Path) -> bool:
    kw, est = _main_kw(view), view.main["estimator"]
    pts = []
    for a in view.plain:
        cov = view.values("covariance", a, lambda r: r["poisoned"]["logdet_per_dim"], **kw)
        mi = view.values("mi", a, "mean", **kw, estimator=est)
        if cov and mi:
            pts.append((a, mean_std(mi), mean_std(cov)))
    if len(pts) < 2:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for (a, (xm, xs, _), (ym, ys, _)), c in zip(pts, _colors(len(pts))):
        marker = "^" if a == "clean" else ("s" if a.startswith("mi-ue") else "o")
        ax.errorbar(xm, ym, xerr=0 if math.isnan(xs) else xs, yerr=0 if math.isnan(ys) else ys, fmt=marker, color=c,
                    ms=7, capsize=2)
        ax.annotate(a, (xm, ym), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel(f"sliced MI of g(X), g(X'), {est} (nats)")
    ax.set_ylabel("class-averaged log det(Σ + λI) / d of g(X')")
    ax.set_title(f"Figure 3: feature covariance against MI, victim {kw['victim']}", fontsize=10)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def fig4(view: RunView, path: Path, index: int = 0) -> bool:
    from ..data import read_poisoned
    cols = []
    for a in view.plain[1:]:
        t = next((t for t in view.tasks if t["kind"] == "poison" and t["cell"]["attack"] == a
                  and t["key"] in view.results), None)
        if t is None:
            continue
        d = view.store.poison_dir(t["key"])
        if (d / "manifest.json").is_file():
            cols.append((a, read_poisoned(d)))
    if not cols:
        return False
    plt = _plt()
    fig, axes = plt.subplots(3, len(cols), figsize=(1.6 * len(cols) + 0.8, 5.2), squeeze=False)
    for j, (a, pd) in enumerate(cols):
        i = min(index, len(pd.clean) - 1)
        clean = pd.clean.images[i].astype(np.float64) / 255
        pois = pd.poisoned.images[i].astype(np.float64) / 255
        delta = pois - clean
        span = np.abs(delta).max()
        noise = 0.5 + delta / (2 * span) if span > 0 else np.full_like(delta, 0.5)
        for r, img in enumerate((clean, noise, pois)):
            ax = axes[r][j]
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][j].set_title(a, fontsize=8)
        axes[1][j].set_xlabel(f"max |δ| {span * 255:.0f}/255", fontsize=7)
    for r, name in enumerate(("clean", "noise (rescaled)", "poisoned")):
        axes[r][0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"Figure 4: training image {index}: clean, noise and poisoned", fontsize=10)
    _save(fig, path)
    return True


def fig6(view: RunView, path: Path) -> bool:
    kw = _main_kw(view)
    curves = []
    for a in view.plain:
        s = view.slot("victim", a, **kw)
        if not s or not s["seeds"]:
            continue
        hs = [rec.get("history") or [] for rec in s["seeds"].values()]
        n = min(len(h) for h in hs)
        if n == 0:
            continue
        tr = np.mean([[e.get("train_acc", np.nan) for e in h[:n]] for h in hs], axis=0) * PCT
        te = np.mean([[e.get("test_acc", np.nan) for e in h[:n]] for h in hs], axis=0) * PCT
        curves.append((a, tr, te))
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (a, tr, te), c in zip(curves, _colors(len(curves))):
        ep = np.arange(1, len(tr) + 1)
        ax.plot(ep, tr, "-", color=c, marker="o", ms=3, label=f"{a}")
        ax.plot(ep, te, "--", color=c, marker="o", ms=4, mfc="none")
    ax.set_xlabel("epoch")
    longest = max(len(tr) for _, tr, _ in curves)
    if longest <= 20:
        ax.set_xticks(range(1, longest + 1))
    else:
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Figure 6: learning curves, victim {kw['victim']} ({kw['protocol']}); "
                 "solid: train (poisoned), dashed: clean test", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def fig_ratio(view: RunView, path: Path) -> bool:
    series = ratio_series(view)
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    drawn = False
    kw = ratio_kw(view)
    for (name, s), c in zip(series.items(), _colors(len(series))):
        pts = []
        for r, attack in s:
            vals = view.values("victim", attack, test_acc_of, **kw)
            if vals:
                pts.append((r, *mean_std(vals)[:2]))
        if not pts:
            continue
        r, m, sd = map(np.array, zip(*pts))
        ax.errorbar(r, m * PCT, yerr=np.nan_to_num(sd) * PCT, marker="o", color=c, capsize=2, label=name)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("fraction of the training set poisoned")
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_title(f"Accuracy against the poison ratio, victim {view.main['victim']}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def write_figures(view: RunView, out: Path) -> list[str]:
    made = []
    for name, fn in (("fig1", fig1), ("fig2", fig2), ("fig3", fig3), ("fig4", fig4), ("fig6", fig6),
                     ("fig_ratio", fig_ratio)):
        if fn(view, out / f"{name}.png"):
            made.append(f"{name}.png")
    return made

"""Sliced mutual information (Goldfeld & Greenewald, 2021), class-conditional by default.

SMI(X; Y) is the mean over random direction pairs (theta, phi), uniform on the unit
spheres, of the 1-D MI I(theta'X; phi'Y). Following Appendix F of the paper, the MI of
features is estimated per class and averaged over classes (weights n_c / N, i.e. the
class prior); ``conditional=False`` pools all samples instead.

The standard error reported is the Monte Carlo error over slices: the class-averaged
per-slice values s_j have SMI = mean(s_j) and SE = sd(s_j) / sqrt(m). It describes how
far the m slices may be from the slice average for these samples; it does not include
the sampling noise of the n samples themselves. Two results computed with the same
directions can be compared slice by slice (a paired SE, see :mod:`.relations`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UnlearnableError
from .estimators import MIEstimator, make_estimator


def random_directions(m: int, d: int, seed: int = 0) -> np.ndarray:
    """``m`` directions uniform on the unit sphere in R^d (normalised Gaussians), float32."""
    if m <= 0 or d <= 0:
        raise UnlearnableError(f"need m > 0 directions in d > 0 dimensions, got m={m}, d={d}")
    g = np.random.default_rng(seed).standard_normal((m, d))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g.astype(np.float32)


def direction_pairs(m: int, dx: int, dy: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Independent (theta, phi) for X in R^dx and Y in R^dy, reproducible from ``seed``."""
    ss = np.random.SeedSequence(seed).spawn(2)
    return (random_directions(m, dx, int(ss[0].generate_state(1)[0])),
            random_directions(m, dy, int(ss[1].generate_state(1)[0])))


@dataclass
class SlicedMIResult:
    estimator: str
    params: dict
    m: int
    n: int  # samples used in total
    n_per_class: dict  # class -> samples (pooled: {"all": n})
    conditional: bool
    seed: int
    mean: float
    se: float
    per_class: dict = field(default_factory=dict)  # class -> {"n", "mean", "se"}
    slices: np.ndarray | None = field(default=None, repr=False)  # the class-averaged per-slice values

    def to_dict(self) -> dict:
        return {"estimator": self.estimator, "params": self.params, "m": self.m, "n": self.n,
                "n_per_class": self.n_per_class, "conditional": self.conditional, "seed": self.seed,
                "mean": self.mean, "se": self.se, "per_class": self.per_class}


def _estimator(est) -> MIEstimator:
    return make_estimator(est) if isinstance(est, str) else est


def sliced_mi(zx: np.ndarray, zy: np.ndarray, labels: np.ndarray | None = None, *, estimator="ksg",
              m: int = 2000, seed: int = 0, conditional: bool = True, directions=None) -> SlicedMIResult:
    """Sliced MI between row-aligned samples ``zx`` (N, dx) and ``zy`` (N, dy), in nats.

    ``labels`` (N,) enables the class-conditional average (the default); without labels,
    or with ``conditional=False``, all N samples are pooled. ``directions`` may pass a
    (theta, phi) pair to reuse; otherwise they are drawn from ``seed``.
    """
    est = _estimator(estimator)
    zx = np.asarray(zx, dtype=np.float32)
    zy = np.asarray(zy, dtype=np.float32)
    if zx.ndim != 2 or zy.ndim != 2 or zx.shape[0] != zy.shape[0]:
        raise UnlearnableError(f"features must be (N, d) arrays with the same N, got {zx.shape} and {zy.shape}")
    if directions is None:
        theta, phi = direction_pairs(m, zx.shape[1], zy.shape[1], seed)
    else:
        theta, phi = (np.asarray(a, dtype=np.float32) for a in directions)
        if theta.shape != (theta.shape[0], zx.shape[1]) or phi.shape != (theta.shape[0], zy.shape[1]):
            raise UnlearnableError(f"directions {theta.shape}, {phi.shape} do not fit features {zx.shape}, {zy.shape}")
    m = theta.shape[0]
    if conditional and labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (zx.shape[0],):
            raise UnlearnableError(f"labels must be ({zx.shape[0]},), got {labels.shape}")
        groups = [(int(c), np.flatnonzero(labels == c)) for c in np.unique(labels)]
    else:
        conditional = False
        groups = [("all", np.arange(zx.shape[0]))]
    total = sum(len(ix) for _, ix in groups)
    small = [str(c) for c, ix in groups if len(ix) < 4]
    if small:
        raise UnlearnableError(f"too few samples (< 4) in class(es) {', '.join(small)} for an MI estimate")
    acc = np.zeros(m, dtype=np.float64)
    per_class, n_per_class = {}, {}
    for c, ix in groups:
        u = theta @ zx[ix].T  # (m, n_c)
        v = phi @ zy[ix].T
        mi = est.estimate(u, v)
        acc += mi * (len(ix) / total)
        per_class[str(c)] = {"n": len(ix), "mean": float(mi.mean()), "se": _se(mi)}
        n_per_class[str(c)] = len(ix)
    return SlicedMIResult(estimator=est.name, params=est.get_params(), m=m, n=total, n_per_class=n_per_class,
                          conditional=conditional, seed=seed, mean=float(acc.mean()), se=_se(acc),
                          per_class=per_class, slices=acc)


def _se(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")

"""Per-class feature covariance summaries (Figure 3 of the paper).

Theorem 5.1 bounds I(g(X); g(X')) by a term 1/2 E_Y log det Sigma_Y of the poisoned
intra-class feature covariance; MI-UE shrinks it. For each class we report the
log-determinant of the regularised covariance Sigma_c + lambda I (features are usually
rank-deficient: n_c samples in d dimensions), its value per dimension, and the trace,
then average over classes with weights n_c / N. Compare two feature sets only with the
same lambda: :func:`compare_covariance` takes it from the clean features.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnlearnableError


def default_ridge(z: np.ndarray, rel: float = 1e-3) -> float:
    """``rel`` times the mean feature variance of ``z``: a scale-aware ridge."""
    z = np.asarray(z, dtype=np.float64)
    v = float(z.var(axis=0).mean())
    return rel * v if v > 0 else rel


def covariance_summary(z: np.ndarray, labels: np.ndarray, *, ridge: float | None = None) -> dict:
    """Class-averaged log det(Sigma_c + ridge I), log det / d and trace of features ``z`` (N, d)."""
    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(labels)
    if z.ndim != 2 or labels.shape != (z.shape[0],):
        raise UnlearnableError(f"features must be (N, d) with (N,) labels, got {z.shape} and {labels.shape}")
    ridge = default_ridge(z) if ridge is None else float(ridge)
    if ridge <= 0:
        raise UnlearnableError(f"covariance ridge must be positive, got {ridge}")
    d = z.shape[1]
    per_class, w = {}, []
    for c in np.unique(labels):
        zc = z[labels == c]
        if len(zc) < 2:
            raise UnlearnableError(f"class {c} has fewer than 2 samples: no covariance")
        cov = np.cov(zc, rowvar=False).reshape(d, d)
        sign, logdet = np.linalg.slogdet(cov + ridge * np.eye(d))
        per_class[str(int(c))] = {"n": len(zc), "logdet": float(logdet), "trace": float(np.trace(cov))}
        w.append(len(zc))
    w = np.asarray(w, dtype=np.float64) / sum(w)
    logdets = np.array([p["logdet"] for p in per_class.values()])
    traces = np.array([p["trace"] for p in per_class.values()])
    return {"logdet": float(w @ logdets), "logdet_per_dim": float(w @ logdets) / d, "trace": float(w @ traces),
            "ridge": ridge, "dim": d, "per_class": per_class}


def compare_covariance(z_clean: np.ndarray, z_poisoned: np.ndarray, labels: np.ndarray, *,
                       rel_ridge: float = 1e-3) -> dict:
    """Covariance summaries of clean and poisoned features with one ridge (from the clean ones)."""
    ridge = default_ridge(z_clean, rel_ridge)
    c = covariance_summary(z_clean, labels, ridge=ridge)
    p = covariance_summary(z_poisoned, labels, ridge=ridge)
    return {"clean": c, "poisoned": p, "logdet_change": p["logdet"] - c["logdet"],
            "trace_ratio": p["trace"] / c["trace"] if c["trace"] > 0 else float("nan")}

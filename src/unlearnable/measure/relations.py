"""Gaps against a clean reference and the Spearman correlation between them.

The paper (Table 1) reports, per attack, Acc gap = clean test accuracy - test accuracy
after training on the attack's data, and MI gap = MI(clean reference) - MI(attack), and
the Spearman rank correlation between the two across attacks.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ..errors import UnlearnableError
from .sliced import SlicedMIResult


def acc_gap(clean_acc: float, acc: float) -> float:
    """Accuracy drop (same units as the inputs)."""
    return float(clean_acc) - float(acc)


def mi_gap(reference: SlicedMIResult, result: SlicedMIResult) -> dict:
    """MI(reference) - MI(result) with its standard errors.

    ``se`` treats the two estimates as independent, sqrt(se_ref^2 + se^2). When both used
    the same directions, estimator and classes (same m, seed and sample counts), the gap
    is also computed slice by slice and ``se_paired`` is the standard error of those m
    differences, which removes the slice-to-slice variation common to both. The pairing is
    by slice index, so it holds for two different networks too (the paper's gap: clean
    victim on the reference side, the set's own victim on the other), as long as both
    feature spaces have the same dimension: slice j is then the same (theta_j, phi_j) on
    both sides, the m differences are still i.i.d. over directions, and ``se_paired`` is
    the Monte Carlo error of the gap; it only cancels less shared variation than with
    one network (see :meth:`unlearnable.measure.gaps.MIGapMeter.summary`).
    """
    if reference.estimator != result.estimator or reference.params != result.params:
        raise UnlearnableError(f"MI gap needs the same estimator on both sides, got {reference.estimator} "
                               f"{reference.params} and {result.estimator} {result.params}")
    gap = reference.mean - result.mean
    out = {"estimator": result.estimator, "gap": gap, "se": math.hypot(reference.se, result.se),
           "m": result.m, "n": result.n}
    if (reference.slices is not None and result.slices is not None and reference.m == result.m
            and reference.seed == result.seed and reference.n_per_class == result.n_per_class):
        d = reference.slices - result.slices
        out["se_paired"] = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return out


def spearman(xs, ys) -> dict:
    """Spearman rank correlation (scipy) between two equally long sequences. When one side
    is constant the correlation is undefined: rho and p are None (JSON null, not NaN) and
    ``undefined`` says why."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise UnlearnableError(f"spearman needs two 1-D sequences of equal length, got {xs.shape} and {ys.shape}")
    if len(xs) < 3:
        raise UnlearnableError(f"spearman needs at least 3 results, got {len(xs)}")
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return {"rho": None, "p_value": None, "n": int(len(xs)), "undefined": "one side is constant"}
    r = stats.spearmanr(xs, ys)
    return {"rho": float(r.statistic), "p_value": float(r.pvalue), "n": int(len(xs))}


def relate(clean_acc: float, accs: dict, mi_gaps: dict) -> dict:
    """Acc gaps for ``accs`` (name -> accuracy) and their Spearman correlation with ``mi_gaps``
    (name -> MI gap), over the names present in both."""
    names = [k for k in accs if k in mi_gaps]
    gaps = {k: acc_gap(clean_acc, accs[k]) for k in names}
    out = {"acc_gap": gaps, "mi_gap": {k: mi_gaps[k] for k in names}}
    if len(names) >= 3:
        out["spearman"] = spearman([gaps[k] for k in names], [mi_gaps[k] for k in names])
    return out

"""Measure why unlearnable examples work: sliced MI, covariance, linear separability.

    from unlearnable.measure import KSGMI, sliced_mi, paired_features
    zc, zp = paired_features(model, clean, poisoned)
    ref = sliced_mi(zc, zc, labels, estimator=KSGMI())   # clean reference
    res = sliced_mi(zc, zp, labels, estimator=KSGMI())   # clean vs poisoned
    mi_gap(ref, res)                                      # {"gap", "se", "se_paired", ...}

The paper's g is the victim trained on each set, with the clean victim's reference:
``MIGapMeter`` (:mod:`.gaps`). See docs/measuring-mi.md for what each estimator measures
and its bias.
"""

from .covariance import compare_covariance, covariance_summary
from .estimators import ESTIMATORS, HistogramMI, KDEMI, KSGMI, MIEstimator, MINEMI, gaussian_mi, make_estimator
from .features import extract_features, paired_features
from .gaps import MIGapMeter
from .relations import acc_gap, mi_gap, relate, spearman
from .separability import linear_train_accuracy, separability_report
from .sliced import SlicedMIResult, direction_pairs, random_directions, sliced_mi

__all__ = ["ESTIMATORS", "HistogramMI", "KDEMI", "KSGMI", "MIGapMeter", "MINEMI", "MIEstimator", "SlicedMIResult",
           "acc_gap", "compare_covariance", "covariance_summary", "direction_pairs", "extract_features",
           "gaussian_mi", "linear_train_accuracy", "make_estimator", "mi_gap", "paired_features",
           "random_directions", "relate", "separability_report", "sliced_mi", "spearman"]

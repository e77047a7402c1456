"""The MI gap as the paper measures it: which network g, and the (reference, per-set) pair.

The paper's g is the feature extractor of the victim trained on the dataset in question
(Appendix A: "classifier f trained on poisoned distribution D'"). For a protected set
with clean training images X and protected images X' (row i of both is one image):

    MI gap = SMI(g_clean(X); g_clean(X))  -  SMI(g_p(X); g_p(X'))

g_clean is the victim trained on the clean images (the paper's "Clean" reference) and
g_p the victim trained on the protected set. This is ``mi_model="victim"``, the default
of ``demo``, ``compare`` and ``measure`` (``unlearnable run`` measures the same way).
``mi_model="clean"`` puts g_clean on both sides: how far a clean network's features of
X' are from its features of X. That is not the paper's definition and is labelled so
wherever it is printed.

Both sides use the same direction pairs (same m, seed and feature dimension), so a gap
can also be taken slice by slice; see :meth:`MIGapMeter.summary` for what that paired
standard error means when the two sides are different networks.
"""

from __future__ import annotations

import numpy as np

from ..data.dataset import ImageDataset
from ..errors import UnlearnableError
from .estimators import make_estimator
from .features import extract_features, paired_features
from .relations import mi_gap
from .sliced import SlicedMIResult, direction_pairs, sliced_mi

MI_MODELS = ("victim", "clean")

#: what g was, in a table title or a JSON field (``checkpoint``: ``measure --model CKPT``)
G_DESCRIPTIONS = {
    "victim": "the victim trained on each set; clean reference from the clean victim",
    "clean": "the clean victim for every set (not the paper's definition)",
    "checkpoint": "one checkpoint for every set (not the paper's definition unless it is the set's own victim)",
}

#: the same, short enough for one printed MI line
G_SHORT = {"victim": "victim trained on each set", "clean": "the clean victim (not the paper's g)",
           "checkpoint": "one checkpoint for every set"}


def check_mi_model(name: str) -> str:
    if name not in MI_MODELS:
        raise UnlearnableError(f"unknown mi_model {name!r}; choose from {', '.join(MI_MODELS)}")
    return name


class MIGapMeter:
    """The clean reference SMI(z; z) of reference features ``z_ref``, computed once per
    estimator, and SMI(g(X); g(X')) of any network g against it with the same directions.

    ``slices`` is one m for every estimator or a dict estimator -> m. Build it from a
    model with :meth:`for_model` (then :meth:`measure` takes a model and the protected
    images), or from features when the caller extracts them itself (``measure``).
    """

    def __init__(self, z_ref: np.ndarray, labels: np.ndarray, *, estimators=("hist", "ksg"), slices=500,
                 seed: int = 0, conditional: bool = True, clean: ImageDataset | None = None):
        self.z_ref, self.labels, self.seed, self.conditional = z_ref, np.asarray(labels), seed, conditional
        self.estimators = list(estimators)
        self.slices = {e: int(slices[e] if isinstance(slices, dict) else slices) for e in self.estimators}
        self.clean = clean
        d = z_ref.shape[1]
        # the same (theta, phi) for the reference and every set: sliced_mi would draw exactly
        # these from (m, d, d, seed) too; holding them makes the pairing explicit
        self.directions = {e: direction_pairs(self.slices[e], d, d, seed) for e in self.estimators}
        self._reference: dict[str, SlicedMIResult] = {}

    @classmethod
    def for_model(cls, reference_model, clean: ImageDataset, **kwargs) -> "MIGapMeter":
        """The reference from ``reference_model``'s features of ``clean`` (the clean victim)."""
        return cls(extract_features(reference_model, clean), clean.labels, clean=clean, **kwargs)

    def _sliced(self, est: str, zx: np.ndarray, zy: np.ndarray) -> SlicedMIResult:
        if zx.shape[1] != self.z_ref.shape[1] or zy.shape[1] != self.z_ref.shape[1]:
            raise UnlearnableError(f"features of dimension {zx.shape[1]}, {zy.shape[1]} cannot share the reference's "
                                   f"directions (dimension {self.z_ref.shape[1]}): use the same architecture for g")
        return sliced_mi(zx, zy, self.labels, estimator=make_estimator(est), conditional=self.conditional,
                         directions=self.directions[est], seed=self.seed)

    def reference(self, est: str) -> SlicedMIResult:
        """SMI(g_clean(X); g_clean(X)) for ``est`` (computed on first use)."""
        if est not in self._reference:
            self._reference[est] = self._sliced(est, self.z_ref, self.z_ref)
        return self._reference[est]

    def against(self, est: str, zc: np.ndarray, zp: np.ndarray) -> SlicedMIResult:
        """SMI(g(X); g(X')) for features zc = g(X), zp = g(X') of the reference's rows."""
        return self._sliced(est, zc, zp)

    def measure(self, model, poisoned: ImageDataset) -> dict:
        """:meth:`summary` of every estimator for g = ``model`` and the protected images
        ``poisoned`` (aligned row by row with the reference's clean images)."""
        if self.clean is None:
            raise UnlearnableError("this MI meter was built from features: pass features to against()")
        zc, zp = paired_features(model, self.clean, poisoned)
        return {e: self.summary(self.reference(e), self.against(e, zc, zp)) for e in self.estimators}

    @staticmethod
    def summary(ref: SlicedMIResult, res: SlicedMIResult) -> dict:
        """Reference, protected SMI and the gap, rounded, with one SE.

        The SE is the paired one when defined (same directions, m, seed and classes): the
        standard error of the m per-slice differences ref_j - res_j. The slices are i.i.d.
        direction pairs, so this is the Monte Carlo error of the gap for these samples and
        these networks whether or not g is the same on both sides. With one g it also
        cancels the direction-to-direction variation both sides share; with two networks
        (the paper's g) slice j projects two different feature spaces, the two sides are
        much less correlated and the paired SE comes closer to the unpaired one.
        """
        gap = mi_gap(ref, res)
        return {"clean": round(ref.mean, 5), "poisoned": round(res.mean, 5), "gap": round(gap["gap"], 5),
                "se": round(gap.get("se_paired", gap["se"]), 5), "m": res.m,
                "n_per_class": int(min(res.n_per_class.values())), "params": res.params}

"""Oracle tests for the 1-D MI estimators and sliced MI (unlearnable.measure).

Tolerances come from the known behaviour of each estimator at the n used
(../shared/notes/measuring-mi.md, measured with 20 repeats at n = 2000):

  truth (nats)          rho=0   0.5     0.9     = -1/2 ln(1 - rho^2)
                        0       0.1438  0.8304
  histogram plug-in     0.971   1.018   1.364   (bias +0.97 .. +0.53)
  Miller-Madow          0.655   0.715   1.140
  KSG k=3 (unclipped)   0.003   0.1425  0.836   (|bias| <= 0.006)
  KDE, grid integral    0.008   0.146   0.834   (bias +0.004 .. +0.008)
  MINE (in-sample)      0.007   0.144   0.817   (a lower bound: below the truth at high MI)

Each check is |mean over m slices - (truth + known bias)| <= slack + 4 SE, where SE is
the standard error over the m independent slices of the test (so a correct estimator
fails with probability < 1e-4 per check) and the slack covers the uncertainty of the
reference bias (its own SE over 20 repeats, about 0.01 for the histogram and 0.005 for
the others).
"""

from __future__ import annotations

import numpy as np
import pytest

from unlearnable.errors import UnlearnableError
from unlearnable.measure import (HistogramMI, KDEMI, KSGMI, MINEMI, gaussian_mi, make_estimator, random_directions,
                                 sliced_mi)
from unlearnable.measure.sliced import direction_pairs

N = 2000
RHOS = (0.0, 0.5, 0.9)


def gaussian_pairs(rho, m, n, seed):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((m, n))
    v = rho * u + np.sqrt(1 - rho ** 2) * rng.standard_normal((m, n))
    return u, v


def se(x):
    return np.std(x, ddof=1) / np.sqrt(len(x))


# (estimator factory, {rho: expected mean = truth + known bias at n = 2000}, slack)
ORACLES = {
    "hist": (lambda: HistogramMI(), {0.0: 0.971, 0.5: 1.018, 0.9: 1.364}, 0.03),
    "hist-mm": (lambda: HistogramMI(correction="miller-madow"), {0.0: 0.655, 0.5: 0.715, 0.9: 1.140}, 0.03),
    "ksg": (lambda: KSGMI(), {0.0: 0.003, 0.5: 0.1425, 0.9: 0.836}, 0.012),
    "kde": (lambda: KDEMI(), {0.0: 0.008, 0.5: 0.146, 0.9: 0.834}, 0.012),
}


@pytest.mark.parametrize("name", list(ORACLES))
@pytest.mark.parametrize("rho", RHOS)
def test_bivariate_gaussian_oracle(name, rho):
    make, expected, slack = ORACLES[name]
    u, v = gaussian_pairs(rho, 24, N, seed=int(rho * 10) + 1)
    mi = make().estimate(u, v)
    assert mi.shape == (24,)
    assert abs(mi.mean() - expected[rho]) <= slack + 4 * se(mi), (mi.mean(), expected[rho])
    # every single slice: within 6 per-slice standard deviations of the expected value
    assert np.all(np.abs(mi - expected[rho]) <= slack + 6 * mi.std(ddof=1) + 1e-3)


def test_consistent_estimators_approach_the_truth():
    # KSG and KDE are within 0.015 nats of the closed form at n = 2000 (hist is not: bias)
    for rho in RHOS:
        u, v = gaussian_pairs(rho, 24, N, seed=7)
        for est in (KSGMI(), KDEMI()):
            mi = est.estimate(u, v)
            assert abs(mi.mean() - gaussian_mi(rho)) <= 0.015 + 4 * se(mi)


def test_mine_oracle_quick():
    # MINE with fewer iterations and a smaller batch than the default (test speed): a
    # held-out DV lower bound, so it may fall below the truth (about -0.02 at rho = 0.9
    # with 200 iterations; allow -0.12) but not exceed it by more than its noise.
    for rho, seed in ((0.0, 1), (0.9, 2)):
        u, v = gaussian_pairs(rho, 6, 1000, seed)
        mi = MINEMI(iters=200, batch=400).estimate(u, v)
        truth = gaussian_mi(rho)
        assert mi.mean() <= truth + 0.03 + 4 * se(mi)
        assert mi.mean() >= truth - 0.12 - 4 * se(mi)


def test_ksg_independent_is_about_zero_and_not_clipped():
    u, v = gaussian_pairs(0.0, 60, 1000, seed=3)
    mi = KSGMI().estimate(u, v)
    assert abs(mi.mean()) <= 0.006 + 4 * se(mi)
    assert (mi < 0).any(), "KSG values must not be clipped at 0"


def test_ksg_matches_brute_force_knn():
    # the strip search must give exactly the k-NN distances of a full search
    from scipy.special import digamma
    rng = np.random.default_rng(5)
    u = np.concatenate([rng.standard_normal((3, 700)), rng.standard_cauchy((2, 700))])
    v = 0.6 * u + rng.standard_normal((5, 700))
    got = KSGMI(noise=0, precision="float64").estimate(u, v)
    for i in range(5):
        a = (u[i] - u[i].mean()) / u[i].std()
        b = (v[i] - v[i].mean()) / v[i].std()
        d = np.maximum(np.abs(a[:, None] - a[None]), np.abs(b[:, None] - b[None]))
        np.fill_diagonal(d, np.inf)
        eps = np.sort(d, axis=1)[:, 2] * (1 - 1e-9)
        nx = (np.abs(a[:, None] - a[None]) < eps[:, None]).sum(1) - 1
        ny = (np.abs(b[:, None] - b[None]) < eps[:, None]).sum(1) - 1
        ref = digamma(3) + digamma(700) - np.mean(digamma(nx + 1) + digamma(ny + 1))
        assert got[i] == pytest.approx(ref, abs=1e-9)


def test_ksg_breaks_ties():
    # duplicated rows and a block of identical values (dead ReLU features) stay finite
    rng = np.random.default_rng(0)
    u = rng.standard_normal((2, 500))
    u[:, :100] = 0.0
    v = u + 0.1 * rng.standard_normal((2, 500))
    v[:, :100] = 0.0
    mi = KSGMI().estimate(u, v)
    assert np.isfinite(mi).all()


def test_histogram_equals_histogram2d_loop():
    u, v = gaussian_pairs(0.5, 5, 777, seed=11)
    u = u.astype(np.float32)
    v = v.astype(np.float32)
    got = HistogramMI().estimate(u, v)
    for i in range(5):
        c, _, _ = np.histogram2d(u[i], v[i], bins=100)
        p = c / c.sum()
        q = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
        nz = p > 0
        assert got[i] == pytest.approx(float((p[nz] * np.log(p[nz] / q[nz])).sum()), abs=1e-9)


def test_histogram_plugin_bias_depends_on_n_as_in_the_notes():
    # independent data, 100 bins: 2.12 (n=500), 1.51 (n=1000), 0.475 (n=5000) nats
    expected = {500: 2.12, 1000: 1.51, 5000: 0.475}
    prev = np.inf
    for n, bias in expected.items():
        u, v = gaussian_pairs(0.0, 10, n, seed=n)
        mi = HistogramMI().estimate(u, v)
        assert abs(mi.mean() - bias) <= 0.03 + 4 * se(mi)
        assert mi.mean() < prev
        prev = mi.mean()
        mm = HistogramMI(correction="miller-madow").estimate(u, v)
        assert np.all(mm < mi)  # the correction removes part of the bias


def test_sliced_mi_of_jointly_gaussian_vectors_matches_exact_per_slice_values():
    # X ~ N(0, I_d), Y = A X + E: each slice (theta, phi) is a bivariate Gaussian with
    # rho = theta' Sxy phi / sqrt(theta' Sx theta phi' Sy phi), MI = -1/2 ln(1 - rho^2).
    rng = np.random.default_rng(2)
    d, n, m = 6, 2000, 40
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    x = rng.standard_normal((n, d))
    y = x @ a.T + 0.5 * rng.standard_normal((n, d))
    sx, sxy, sy = np.eye(d), a.T, a @ a.T + 0.25 * np.eye(d)
    theta, phi = direction_pairs(m, d, d, seed=4)
    th, ph = theta.astype(np.float64), phi.astype(np.float64)
    rho = np.einsum("id,de,ie->i", th, sxy, ph) / np.sqrt(np.einsum("id,de,ie->i", th, sx, th)
                                                          * np.einsum("id,de,ie->i", ph, sy, ph))
    exact = gaussian_mi(rho)
    assert exact.mean() > 0.05  # a non-trivial target
    for est, bias in ((KSGMI(), 0.006), (KDEMI(), 0.01)):
        res = sliced_mi(x, y, estimator=est, directions=(theta, phi))
        per_slice = est.estimate(theta @ x.T.astype(np.float32), phi @ y.T.astype(np.float32))
        np.testing.assert_allclose(res.slices, per_slice)
        diff = per_slice - exact
        assert abs(diff.mean()) <= bias + 4 * se(diff), (est.name, diff.mean())
        assert np.all(np.abs(diff) <= 0.1)
        assert res.m == m and res.n == n and not res.conditional


def test_class_conditional_average():
    # class 0: strongly dependent, class 1: independent; the conditional SMI is the
    # n_c / N weighted mean of the per-class values, the pooled one is something else
    rng = np.random.default_rng(8)
    n0, n1, d = 600, 300, 4
    x0 = rng.standard_normal((n0, d))
    x1 = rng.standard_normal((n1, d))
    zx = np.concatenate([x0, x1])
    zy = np.concatenate([x0 + 0.1 * rng.standard_normal((n0, d)), rng.standard_normal((n1, d))])
    labels = np.array([0] * n0 + [1] * n1)
    res = sliced_mi(zx, zy, labels, estimator="ksg", m=50, seed=1)
    assert res.conditional and res.n_per_class == {"0": n0, "1": n1} and res.m == 50
    pc = res.per_class
    assert pc["0"]["mean"] > 0.1 > abs(pc["1"]["mean"])
    assert res.mean == pytest.approx((n0 * pc["0"]["mean"] + n1 * pc["1"]["mean"]) / (n0 + n1))
    assert res.se > 0 and res.se == pytest.approx(np.std(res.slices, ddof=1) / np.sqrt(50))
    pooled = sliced_mi(zx, zy, labels, estimator="ksg", m=50, seed=1, conditional=False)
    assert not pooled.conditional and pooled.n_per_class == {"all": n0 + n1}
    assert pooled.mean != pytest.approx(res.mean, abs=1e-3)
    d = res.to_dict()
    assert {"estimator", "params", "m", "n_per_class", "mean", "se"} <= set(d)


def test_directions_unit_seeded_independent():
    a = random_directions(100, 32, seed=3)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(a, random_directions(100, 32, seed=3))
    t, p = direction_pairs(50, 16, 16, seed=0)
    assert not np.allclose(t, p)
    assert abs(np.mean(np.sum(t * p, axis=1))) < 0.1


def test_interface_and_errors():
    u, v = gaussian_pairs(0.5, 3, 300, seed=1)
    for name in ("hist", "hist-mm", "kde", "ksg"):
        est = make_estimator(name)
        assert isinstance(est.get_params(), dict) and est.name == name
        assert est.fit(u, v).mi_.shape == (3,)
        assert isinstance(est.estimate(u[0], v[0]), float)
    np.testing.assert_array_equal(KSGMI().estimate(u, v), KSGMI().estimate(u, v))  # seeded
    with pytest.raises(UnlearnableError):
        make_estimator("nope")
    with pytest.raises(UnlearnableError):
        HistogramMI().estimate(u, v[:, :10])
    with pytest.raises(UnlearnableError):
        KSGMI().estimate(np.full((1, 10), np.nan), v[:1, :10])
    with pytest.raises(UnlearnableError):
        HistogramMI(correction="bogus")


def test_results_do_not_depend_on_worker_count():
    u, v = gaussian_pairs(0.3, 130, 400, seed=9)
    for make in (KSGMI, KDEMI, HistogramMI):
        one, two = make(), make()
        one.n_jobs, two.n_jobs = 1, 2
        np.testing.assert_array_equal(one.estimate(u, v), two.estimate(u, v))

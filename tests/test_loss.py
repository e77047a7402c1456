import numpy as np
import pytest
import torch

from unlearnable.attacks.losses import mi_loss, mi_loss_naive, mi_loss_per_sample


def reference(z, y, tau, zeta):
    """Eq. 2 written out with loops in float64 (distance over same-class k != j)."""
    z = np.asarray(z, dtype=np.float64)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    out = []
    for j in range(len(y)):
        pos = sum(np.exp(zn[j] @ zn[k] / tau) for k in range(len(y)) if y[k] == y[j])
        neg = sum(np.exp(zn[j] @ zn[k] / tau) for k in range(len(y)) if y[k] != y[j])
        dist = sum(np.linalg.norm(z[j] - z[k]) for k in range(len(y)) if y[k] == y[j] and k != j)
        out.append(np.log(1 + neg / pos) + zeta * np.log(1 + dist))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_float64_reference(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(37, 24, generator=g) * 3
    y = torch.randint(0, 5, (37,), generator=g)
    got = mi_loss_per_sample(z, y, tau=0.1, zeta=0.1).double().numpy()
    want = reference(z.numpy(), y.numpy(), 0.1, 0.1)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_naive_equals_vectorised():
    g = torch.Generator().manual_seed(3)
    z, y = torch.randn(40, 16, generator=g), torch.randint(0, 4, (40,), generator=g)
    assert torch.allclose(mi_loss(z, y), mi_loss_naive(z, y), rtol=1e-4, atol=1e-4)


def test_permutation_invariant():
    g = torch.Generator().manual_seed(4)
    z, y = torch.randn(50, 8, generator=g), torch.randint(0, 6, (50,), generator=g)
    perm = torch.randperm(50, generator=g)
    per = mi_loss_per_sample(z, y)
    assert torch.allclose(mi_loss_per_sample(z[perm], y[perm]), per[perm], atol=1e-5)
    assert torch.allclose(mi_loss(z[perm], y[perm]), mi_loss(z, y), atol=1e-5)


def test_class_with_one_sample():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(9, 8, generator=g)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2])  # class 2 has one sample
    got = mi_loss_per_sample(z, y).double().numpy()
    np.testing.assert_allclose(got, reference(z.numpy(), y.numpy(), 0.1, 0.1), rtol=2e-4, atol=2e-4)
    assert np.isfinite(got).all()
    # Its distance term is log(1 + 0) = 0 and its only positive is itself.
    assert got[-1] == pytest.approx(reference(z.numpy(), y.numpy(), 0.1, 0.0)[-1], abs=2e-4)


def test_batch_with_one_class():
    z = torch.randn(12, 8, generator=torch.Generator().manual_seed(6))
    y = torch.zeros(12, dtype=torch.long)
    got = mi_loss_per_sample(z, y, zeta=0.0)
    assert torch.allclose(got, torch.zeros(12), atol=1e-6)  # no negatives: log(1 + 0)
    assert torch.isfinite(mi_loss_per_sample(z, y)).all()


def test_gradient_finite_when_features_coincide():
    z = torch.ones(6, 4, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    (g,) = torch.autograd.grad(mi_loss(z, y), z)
    assert torch.isfinite(g).all()


def test_loss_decreases_when_classes_cluster():
    g = torch.Generator().manual_seed(7)
    y = torch.arange(40) % 4
    centres = torch.randn(4, 16, generator=g) * 5
    clustered = centres[y] + 0.05 * torch.randn(40, 16, generator=g)
    scattered = torch.randn(40, 16, generator=g) * 5
    assert mi_loss(clustered, y) < mi_loss(scattered, y)


def test_memory_is_quadratic_not_cubic():
    """No B x B x D tensor: the autograd graph holds O(B^2 + B*D) floats."""
    B, D = 256, 512
    z = torch.randn(B, D, requires_grad=True)
    y = torch.arange(B) % 10
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        mi_loss(z, y)
    assert max(saved) <= 4 * B * max(B, D)
    assert sum(saved) < 40 * (B * B + B * D)


@pytest.mark.parametrize("zeta,scale", [(0.1, 1.0), (0.0, 1.0), (0.5, 1 / 16)])
def test_fused_backward_matches_autograd(zeta, scale):
    from unlearnable.attacks.losses import _MILoss, mi_loss_autograd
    g = torch.Generator().manual_seed(8)
    z = torch.randn(23, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (23,), generator=g)
    y[0] = 7  # a class with one sample
    fn = lambda t: _MILoss.apply(t, y, 0.1, zeta, scale)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-5)
    w = torch.randn(23, generator=g, dtype=torch.float64)
    (a,) = torch.autograd.grad((fn(z) * w).sum(), z)
    (b,) = torch.autograd.grad((mi_loss_autograd(z, y, zeta=zeta, distance_scale=scale) * w).sum(), z)
    assert torch.allclose(a, b, atol=1e-8)
    assert torch.allclose(fn(z), mi_loss_autograd(z, y, zeta=zeta, distance_scale=scale), atol=1e-10)


def test_zero_feature_row_is_finite():
    z = torch.randn(8, 5, dtype=torch.float64)
    z[2] = 0
    z.requires_grad_(True)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    (g,) = torch.autograd.grad(mi_loss(z, y), z)
    assert torch.isfinite(g).all()

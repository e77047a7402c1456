"""bench/unrolled_mlp.py: the meta-gradient through the unrolled inner training is exact."""

import torch
import torch.nn.functional as F

from conftest import load_bench

unrolled_mlp = load_bench("unrolled_mlp")


def _problem():
    gen = torch.Generator().manual_seed(0)
    params = [p.double() for p in unrolled_mlp.init_mlp(5, 4, 3, gen)]
    x = torch.rand(8, 5, dtype=torch.float64, generator=gen)
    y = torch.arange(8) % 3
    xh = torch.rand(6, 5, dtype=torch.float64, generator=gen)
    return params, x, y, xh, torch.arange(6) % 3


def test_zero_inner_steps_is_the_initial_network():
    params, x, y, xh, yh = _problem()
    got = unrolled_mlp.unrolled_loss(x, y, xh, yh, [p.requires_grad_(True) for p in params], 0, 0.5)
    assert torch.allclose(got, F.cross_entropy(unrolled_mlp.mlp(params, xh), yh))


def test_the_held_out_loss_is_differentiated_through_the_inner_steps():
    params, x, y, xh, yh = _problem()

    def fn(xt):
        return unrolled_mlp.unrolled_loss(xt, y, xh, yh, [p.clone().requires_grad_(True) for p in params], 3, 0.5)

    xt = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(xt), xt)
    assert g.abs().max() > 0  # the held-out images are not the training images: only the inner run links them
    assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)

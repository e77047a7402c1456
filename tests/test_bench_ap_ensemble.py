"""bench/ap_ensemble.py: the ensemble's logits are the members' mean, so the size-1 ensemble is its member."""

import torch

from conftest import load_bench

ap_ensemble = load_bench("ap_ensemble")


def test_logit_mean_averages_the_members():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    torch.testing.assert_close(ap_ensemble.LogitMean([a, b])(x), (a(x) + b(x)) / 2)
    assert torch.equal(ap_ensemble.LogitMean([a])(x), a(x))

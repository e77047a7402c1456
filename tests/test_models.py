import pytest
import torch

from unlearnable.errors import UnlearnableError
from unlearnable.models import build_model


@pytest.mark.parametrize("name", ["cnn", "lenet-5", "resnet-18"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_features_then_head(name, channels, size):
    torch.manual_seed(0)
    m = build_model(name, channels, 10, size).eval()
    x = torch.rand(2, channels, size, size)
    z = m.features(x)
    assert z.shape == (2, m.feature_dim)
    assert torch.allclose(m.head(z), m(x))


def test_names_case_insensitive_and_unknown():
    assert type(build_model("ResNet-18", 3, 10, 32)) is type(build_model("resnet18", 3, 10, 32))
    with pytest.raises(UnlearnableError, match="unknown model"):
        build_model("resnet-9000", 3, 10, 32)


def test_parameter_counts():
    # CIFAR ResNet-18: 11.17M parameters; the 4-conv CNN about 0.39M; LeNet-5 about 62k at 32 px RGB.
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(build_model("resnet-18", 3, 10, 32)) - 11_173_962) == 0
    assert 380_000 < count(build_model("cnn", 1, 10, 28)) < 400_000
    assert 60_000 < count(build_model("lenet-5", 3, 10, 32)) < 63_000

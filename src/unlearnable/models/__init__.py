"""Model zoo behind a registry; every model exposes ``features(x)`` and ``head(z)``."""

from .base import FeatureModel
from .cnn import ConvNet4
from .lenet import LeNet5
from .registry import build_model, model_names, register_model
from .resnet import resnet18, resnet34, resnet50, resnet101, resnet152

register_model("cnn", "convnet4", "cnn-4")(ConvNet4)


def cnn_small(**kw):
    """The 4-conv CNN at half width (16-32-64-128, about 0.1M parameters): a cheaper source model."""
    return ConvNet4(width=16, **kw)


register_model("cnn-small")(cnn_small)
register_model("lenet-5", "lenet5", "lenet")(LeNet5)
register_model("resnet-18", "resnet18")(resnet18)
register_model("resnet-34", "resnet34")(resnet34)
register_model("resnet-50", "resnet50")(resnet50)
register_model("resnet-101", "resnet101")(resnet101)
register_model("resnet-152", "resnet152")(resnet152)

__all__ = ["FeatureModel", "build_model", "model_names", "register_model"]

"""Model zoo behind a registry; every model exposes ``features(x)`` and ``head(z)``."""

from .base import FeatureModel
from .cnn import ConvNet4
from .densenet import densenet121
from .lenet import LeNet5
from .mlp import linear, three_nn, two_nn
from .registry import build_model, check_model_name, is_model_name, model_key, model_names, register_model
from .resnet import resnet18, resnet34, resnet50, resnet101, resnet152
from .vgg import vgg11
from .vit import vit_b, vit_h, vit_l
from .wrn import wrn28_10, wrn34_10

register_model("cnn", "convnet4", "cnn-4")(ConvNet4)


def cnn_small(**kw):
    """The 4-conv CNN at half width (16-32-64-128, about 0.1M parameters): a cheaper source model."""
    return ConvNet4(**{"width": 16, **kw})


register_model("cnn-small")(cnn_small)
register_model("lenet-5", "lenet5", "lenet")(LeNet5)
register_model("resnet-18", "resnet18")(resnet18)
register_model("resnet-34", "resnet34")(resnet34)
register_model("resnet-50", "resnet50")(resnet50)
register_model("resnet-101", "resnet101")(resnet101)
register_model("resnet-152", "resnet152")(resnet152)
register_model("linear")(linear)
register_model("2-nn", "2nn")(two_nn)
register_model("3-nn", "3nn")(three_nn)
register_model("vgg-11", "vgg11")(vgg11)
register_model("densenet-121", "densenet121")(densenet121)
register_model("wrn-34-10", "wrn34-10")(wrn34_10)
register_model("wrn-28-10", "wrn28-10")(wrn28_10)
register_model("vit-b", "vit-base")(vit_b)
register_model("vit-l", "vit-large")(vit_l)
register_model("vit-h", "vit-huge")(vit_h)

__all__ = ["FeatureModel", "build_model", "check_model_name", "is_model_name", "model_key", "model_names", "register_model"]

"""Fully connected victims on flattened pixels: Linear, 2-NN and 3-NN.

The MI-UE paper (Zhu et al., arXiv:2603.03725, Section 4 and Table 13) evaluates a
linear classifier and two/three-layer fully connected networks to show that shallow
models are less affected by unlearnable examples; it gives no widths. Our choices:
"k-NN" counts the linear layers (the head included), so 2-NN is
``flatten - fc(512) - ReLU - head`` and 3-NN has two hidden layers; every hidden layer
has ``width`` units (default 512), no normalisation or dropout. For the linear model the
feature extractor is the identity (features are the flattened pixels, as the paper's
argument "g is an identity mapping" assumes) and the head is one affine map.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnlearnableError
from .base import FeatureModel


class MLP(FeatureModel):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, hidden_layers: int = 1,
                 width: int = 512):
        super().__init__()
        if hidden_layers < 0 or width < 1:
            raise UnlearnableError(f"MLP needs hidden_layers >= 0 and width >= 1, got {hidden_layers} and {width}")
        layers, d = [nn.Flatten()], in_channels * image_size * image_size
        for _ in range(hidden_layers):
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        self.body = nn.Sequential(*layers)
        self.feature_dim = d
        self.fc = nn.Linear(d, num_classes)

    def features(self, x):
        return self.body(x)

    def head(self, z):
        return self.fc(z)


def linear(**kw):
    """Linear classifier on the raw pixels (features = the flattened image)."""
    return MLP(hidden_layers=0, **kw)


def two_nn(width: int = 512, **kw):
    """2-NN: one hidden ReLU layer of ``width`` units, then the head."""
    return MLP(hidden_layers=1, width=width, **kw)


def three_nn(width: int = 512, **kw):
    """3-NN: two hidden ReLU layers of ``width`` units, then the head."""
    return MLP(hidden_layers=2, width=width, **kw)

"""A compact 4-conv CNN: the CPU default source and victim model.

Four 3x3 conv + BatchNorm + ReLU blocks, each followed by 2x2 max-pooling, widths
32-64-128-256, then global average pooling (about 0.39M parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import FeatureModel


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ConvNet4(FeatureModel):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 32):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers, c = [], in_channels
        for w in widths:
            # ceil_mode keeps odd sizes (28 -> 14 -> 7 -> 4 -> 2) from losing border pixels.
            layers += [conv_bn(c, w), nn.MaxPool2d(2, ceil_mode=True)]
            c = w
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c
        self.fc = nn.Linear(c, num_classes)

    def features(self, x):
        return torch.flatten(self.pool(self.body(x)), 1)

    def head(self, z):
        return self.fc(z)

"""Wide residual networks (Zagoruyko and Komodakis 2016); WRN-34-10 by default.

WRN-d-k: a 3x3 conv stem to 16 channels, then three groups of n = (d - 4) / 6
pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3) with 16k, 32k and 64k
channels, the first block of groups 2 and 3 with stride 2 and a 1x1 projection shortcut
taken from the pre-activated input (as in the paper's code), then BN-ReLU and global
average pooling (features: 64k dimensions) and a linear head. WRN-34-10, the usual
adversarial-training victim the MI-UE paper uses, has 46.2M parameters for 10 classes.

Choices: no dropout by default (``dropout`` adds it between the two convs, as in the
paper's dropout variant); for inputs of 128 px and more the stem is the ImageNet one
(7x7 conv stride 2 + BN + ReLU + 3x3 max-pool stride 2, to 16 channels), so the three
groups run at 56, 28 and 14 px. ``depth`` and ``widen`` make other variants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnlearnableError
from .base import FeatureModel


class WideBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


class WideResNet(FeatureModel):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, depth: int = 34,
                 widen: int = 10, dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 or widen < 1:
            raise UnlearnableError(f"WRN needs depth = 6n + 4 (n >= 1) and widen >= 1, got {depth} and {widen}")
        n = (depth - 4) // 6
        if image_size >= 128:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks, c = [], 16
        for i, w in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for j in range(n):
                blocks.append(WideBlock(c, w, 2 if (i > 0 and j == 0) else 1, dropout))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.feature_dim = c
        self.fc = nn.Linear(c, num_classes)

    def features(self, x):
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def head(self, z):
        return self.fc(z)


def wrn34_10(**kw):
    return WideResNet(**{"depth": 34, "widen": 10, **kw})


def wrn28_10(**kw):
    return WideResNet(**{"depth": 28, "widen": 10, **kw})

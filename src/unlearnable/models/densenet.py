"""DenseNet-BC (Huang et al. 2017); DenseNet-121 by default.

Four dense blocks of 6, 12, 24 and 16 layers, growth rate k = 32; each layer is
BN-ReLU-conv1x1 (4k channels)-BN-ReLU-conv3x3 (k channels) and its output is concatenated
to its input. Between blocks a transition (BN-ReLU-conv1x1 halving the channels, 2x2
average pooling). After the last block BN-ReLU and global average pooling give the
features (1024 dimensions for DenseNet-121), and one linear layer is the head.

Stems: for 28 and 32 px inputs the CIFAR stem of the paper's CIFAR experiments, one
3x3 conv to 2k channels (no pooling; the first dense layer pre-activates it; 6.96M
parameters for 10 classes); for inputs of 128 px and more the ImageNet stem, 7x7 conv
stride 2 + BN + ReLU + 3x3 max-pool stride 2 (7.98M parameters for 1000 classes). At
28 px the transitions give 14, 7 and 3 px maps. ``growth`` and ``blocks`` make smaller
variants (tests).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UnlearnableError
from .base import PooledBody


def bn_relu_conv(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
    return [nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), conv]


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, bottleneck: int):
        super().__init__()
        mid = bottleneck * growth
        self.net = nn.Sequential(*bn_relu_conv(c_in, mid, 1), *bn_relu_conv(mid, growth, 3))

    def forward(self, x):
        return torch.cat([x, self.net(x)], 1)


class DenseNet(PooledBody):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, growth: int = 32,
                 blocks=(6, 12, 24, 16), bottleneck: int = 4, compression: float = 0.5):
        super().__init__()
        if growth < 1 or not blocks or min(blocks) < 1:
            raise UnlearnableError(f"DenseNet needs growth >= 1 and blocks >= 1 each, got {growth} and {blocks}")
        c = 2 * growth
        if image_size >= 128:
            stem = [nn.Conv2d(in_channels, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, 2, 1)]
        else:
            stem = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False)]
        layers = list(stem)
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth, bottleneck))
                c += growth
            if i < len(blocks) - 1:
                c_out = int(c * compression)
                layers += [*bn_relu_conv(c, c_out, 1), nn.AvgPool2d(2)]
                c = c_out
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.feature_dim = c
        self.fc = nn.Linear(c, num_classes)


def densenet121(**kw):
    return DenseNet(**kw)

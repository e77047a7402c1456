"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, for any input size.

conv 6@5x5 (padded by 2 at 28 px so that the maps match the 32 px original) - pool -
conv 16@5x5 - pool - fc 120 - fc 84 (features) - head. The maps before the first fully
connected layer are pooled adaptively to 5x5, so 28, 32 and 224 px inputs all work.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import FeatureModel


class LeNet5(FeatureModel):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        pad = 2 if image_size < 32 else 0
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
        )
        self.fc = nn.Sequential(nn.Linear(16 * 25, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True))
        self.feature_dim = 84
        self.out = nn.Linear(84, num_classes)

    def features(self, x):
        return self.fc(torch.flatten(self.body(x), 1))

    def head(self, z):
        return self.out(z)

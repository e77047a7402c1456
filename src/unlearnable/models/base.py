"""The contract every model follows: ``features(x)`` then ``head(z)``."""

from __future__ import annotations

import torch
from torch import nn


class FeatureModel(nn.Module):
    """A classifier split into a feature extractor g (penultimate layer, after pooling)
    and a head h, so that ``forward(x) == head(features(x))``."""

    feature_dim: int

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, D)
        raise NotImplementedError

    def head(self, z: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, classes)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PooledBody(FeatureModel):
    """A conv ``body`` then global average pooling as the features, and one linear ``fc`` head.

    Subclasses set ``self.body``, ``self.feature_dim`` and ``self.fc``."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)

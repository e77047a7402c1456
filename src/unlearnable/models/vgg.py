"""VGG-11 (Simonyan and Zisserman 2015, configuration "A") with BatchNorm, CIFAR style.

Eight 3x3 conv + BatchNorm + ReLU layers, widths 64-128-256-256-512-512-512-512, with
2x2 max-pooling after layers 1, 2, 4, 6 and 8; the maps are then globally average-pooled
(features: 512 dimensions) and one linear layer is the head. This is the usual CIFAR
variant (about 9.2M parameters for 10 classes) that the MI-UE paper's Table 13 uses as
"VGG-11". Choices where the sources differ or are silent:

- the pools use ``ceil_mode`` so that 28 px inputs (28-14-7-4-2-1) keep their border
  pixels, like the default CNN; at 32 and 224 px this changes nothing;
- 224 px inputs use the same body (its five pools are VGG's own ImageNet downsampling,
  giving 7x7 maps) followed by global average pooling; the original 4096-4096 fully
  connected classifier on the 7x7x512 maps (about 120M more parameters) is left out so
  that features are 512-dimensional at every size;
- convolutions have no bias (it is redundant before BatchNorm); ``width`` scales all
  widths (64 is the paper's).
"""

from __future__ import annotations

from torch import nn

from ..errors import UnlearnableError
from .base import PooledBody

# Channel multipliers of the base width; "M" is a 2x2 max-pool.
VGG11 = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")


class VGG(PooledBody):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 64,
                 config=VGG11):
        super().__init__()
        if width < 1:
            raise UnlearnableError(f"VGG width must be >= 1, got {width}")
        layers, c = [], in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c, v * width, 3, padding=1, bias=False), nn.BatchNorm2d(v * width),
                           nn.ReLU(inplace=True)]
                c = v * width
        self.body = nn.Sequential(*layers)
        self.feature_dim = c
        self.fc = nn.Linear(c, num_classes)


def vgg11(**kw):
    return VGG(config=VGG11, **kw)

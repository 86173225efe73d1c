"""VGG with BatchNorm for CIFAR-sized inputs, as in Network Slimming (Liu et al., ICCV 2017).

Follows the official slimming code (``models/vgg.py``): every conv is 3×3, padding 1, no bias,
followed by BatchNorm and ReLU; ``"M"`` is a 2×2 max-pool; after the features comes a global
average pool and a single Linear classifier. The slimming code pools with a fixed ``AvgPool2d(2)``
(the 2×2 map left from a 32×32 input); we use ``AdaptiveAvgPool2d(1)``, which is the same on
CIFAR and also accepts 28×28 Fashion-MNIST images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import torch
from torch import nn

from secateur.models._common import conv3x3, init_weights

POOL: Final = "M"
"""The cfg marker for a 2×2 max-pool."""

VGG8_CFG: Final[tuple[int | str, ...]] = (32, 32, POOL, 64, 64, POOL, 128, 128, POOL, 256, 256)
"""A small 8-conv VGG (ours, not from a paper) for fast CPU experiments on 28×28 Fashion-MNIST:
three pools take 28×28 to 3×3, about 1.2M parameters."""

VGG16_CFG: Final[tuple[int | str, ...]] = (
    64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
    512, 512, 512, POOL, 512, 512, 512,
)  # fmt: skip

VGG19_CFG: Final[tuple[int | str, ...]] = (
    64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL,
    512, 512, 512, 512, POOL, 512, 512, 512, 512,
)  # fmt: skip


class VGG(nn.Module):
    """VGG-BN: ``features`` (conv-BN-ReLU and max-pools per ``cfg``), global avg-pool, Linear.

    Args:
        cfg: Layer spec. An int is a conv3x3-BN-ReLU with that many output channels,
            :data:`POOL` a 2×2 max-pool. Pass a pruned model's surviving widths to rebuild it.
        num_classes: Width of the classifier.
        in_channels: Channels of the input image.
    """

    def __init__(
        self, cfg: Sequence[int | str], *, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.cfg: tuple[int | str, ...] = tuple(cfg)
        widths = _validate(self.cfg)
        self.features = _make_features(self.cfg, in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _validate(cfg: tuple[int | str, ...]) -> list[int]:
    """Return the conv widths of ``cfg``; raise ``ValueError`` if it is malformed."""
    bad = [v for v in cfg if v != POOL and not (isinstance(v, int) and v > 0)]
    if bad:
        raise ValueError(f"VGG cfg entries must be positive ints or {POOL!r}, got {bad}")
    widths = [v for v in cfg if isinstance(v, int)]
    if not widths:
        raise ValueError(f"VGG cfg has no conv layer: {cfg}")
    return widths


def _make_features(cfg: tuple[int | str, ...], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in cfg:
        if v == POOL:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(v, int)
            layers += [conv3x3(in_channels, v), nn.BatchNorm2d(v), nn.ReLU()]
            in_channels = v
    return nn.Sequential(*layers)


def vgg8(*, num_classes: int = 10, in_channels: int = 3) -> VGG:
    """The small 8-conv VGG of :data:`VGG8_CFG`."""
    return VGG(VGG8_CFG, num_classes=num_classes, in_channels=in_channels)


def vgg16(*, num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-16-BN as in Network Slimming (14.72M parameters on CIFAR-10)."""
    return VGG(VGG16_CFG, num_classes=num_classes, in_channels=in_channels)


def vgg19(*, num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-19-BN as in Network Slimming (20.04M parameters on CIFAR-10)."""
    return VGG(VGG19_CFG, num_classes=num_classes, in_channels=in_channels)

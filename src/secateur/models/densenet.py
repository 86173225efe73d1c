"""DenseNet-40 for CIFAR as in Network Slimming (Liu et al., ICCV 2017; Huang et al., CVPR 2017).

A 3×3 stem conv to ``2 · growth_rate`` channels, then three dense blocks of ``(depth - 4) / 3``
BN-ReLU-conv3x3 layers, each concatenating its ``growth_rate`` new channels to its input
(``torch.cat``), with BN-ReLU-conv1x1-avgpool transitions between the blocks, and a final
BN-ReLU, global average pool and Linear classifier. No bottleneck layers, no dropout.
DenseNet-40 (growth 12, compression 1) has channel widths 24 → 168 → 312 → 456.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from secateur.models._common import conv1x1, conv3x3, init_weights


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing ``growth_rate`` channels, concatenated after its input."""

    def __init__(self, in_channels: int, growth_rate: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = conv3x3(in_channels, growth_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 followed by a 2×2 average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = conv1x1(in_channels, out_channels)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


def _dense_block(in_channels: int, n: int, growth_rate: int) -> nn.Sequential:
    """``n`` dense layers; the output has ``in_channels + n * growth_rate`` channels."""
    return nn.Sequential(
        *(DenseLayer(in_channels + i * growth_rate, growth_rate) for i in range(n))
    )


def _transition(in_channels: int, compression: float) -> Transition:
    return Transition(in_channels, math.floor(compression * in_channels))


class DenseNetCifar(nn.Module):
    """DenseNet (basic layers, no bottleneck) for CIFAR-sized inputs.

    Args:
        depth: ``3n + 4`` for ``n`` layers per dense block; 40 for the paper's model.
        growth_rate: Channels each dense layer adds.
        compression: Transition output width as a fraction of its input (1 in the paper).
        num_classes: Width of the classifier.
        in_channels: Channels of the input image.
    """

    def __init__(
        self,
        depth: int = 40,
        growth_rate: int = 12,
        compression: float = 1.0,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 7 or (depth - 4) % 3:
            raise ValueError(f"DenseNetCifar depth must be 3n + 4 with n >= 1, got {depth}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        n = (depth - 4) // 3
        channels = 2 * growth_rate
        self.conv1 = conv3x3(in_channels, channels)

        self.dense1 = _dense_block(channels, n, growth_rate)
        self.trans1 = _transition(channels + n * growth_rate, compression)
        channels = self.trans1.conv.out_channels
        self.dense2 = _dense_block(channels, n, growth_rate)
        self.trans2 = _transition(channels + n * growth_rate, compression)
        channels = self.trans2.conv.out_channels
        self.dense3 = _dense_block(channels, n, growth_rate)
        channels += n * growth_rate
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.dense1(self.conv1(x)))
        x = self.trans2(self.dense2(x))
        x = self.relu(self.bn(self.dense3(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def densenet40(*, num_classes: int = 10, in_channels: int = 3) -> DenseNetCifar:
    """DenseNet-40, growth rate 12 (Network Slimming: 1.02M parameters on CIFAR-10)."""
    return DenseNetCifar(40, 12, 1.0, num_classes=num_classes, in_channels=in_channels)

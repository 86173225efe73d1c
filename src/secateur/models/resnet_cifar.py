"""CIFAR ResNets: ResNet-20/32/56/110 (He et al., CVPR 2016, §4.2) and pre-activation ResNet-164
as used in Network Slimming (Liu et al., ICCV 2017; He et al., ECCV 2016).

Both keep the CIFAR layout: a 3×3 stem conv, three stages at base widths 16/32/64 (the second and
third halve the spatial size), a global average pool and one Linear classifier. The global pool is
adaptive, so 28×28 and 32×32 inputs both work.

Where a block changes shape, the shortcut is a projection (**option B**: 1×1 conv + BN in the
post-activation nets, a bare 1×1 conv in the pre-activation net as in the slimming code). The
paper's CIFAR nets use option A, a parameter-free shortcut that subsamples and zero-pads channels;
that bakes the channel counts into the forward code, so the shortcut cannot follow when channels are
pruned. Option B adds 2,752 parameters at every depth (ResNet-20: 269,722 → 272,474).
"""

from __future__ import annotations

import torch
from torch import nn

from secateur.models._common import conv1x1, conv3x3, init_weights


class BasicBlock(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != planes:
            self.shortcut = nn.Sequential(
                conv1x1(in_channels, planes, stride), nn.BatchNorm2d(planes)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: (BN-ReLU-conv) with 1×1, 3×3, 1×1 kernels, plus the shortcut.

    The shortcut takes the block's raw input, as in the slimming code; the 3×3 conv carries the
    stride.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = conv1x1(in_channels, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu3 = nn.ReLU()
        self.conv3 = conv1x1(planes, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv1x1(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        out = self.conv3(self.relu3(self.bn3(out)))
        return out + self.shortcut(x)


def _stage(
    block: type[BasicBlock | PreActBottleneck], in_channels: int, planes: int, n: int, stride: int
) -> nn.Sequential:
    """``n`` blocks; the first maps ``in_channels`` to ``planes * expansion`` with ``stride``."""
    out_channels = planes * block.expansion
    blocks = [block(in_channels, planes, stride)]
    blocks += [block(out_channels, planes, 1) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) of He et al. for CIFAR, with projection shortcuts (option B).

    Args:
        depth: 20, 32, 44, 56, 110, ... (``depth = 6n + 2``, ``n`` basic blocks per stage).
        num_classes: Width of the classifier.
        in_channels: Channels of the input image.
    """

    def __init__(self, depth: int, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNetCifar depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = _stage(BasicBlock, 16, 16, n, stride=1)
        self.layer2 = _stage(BasicBlock, 16, 32, n, stride=2)
        self.layer3 = _stage(BasicBlock, 32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PreActResNetCifar(nn.Module):
    """Pre-activation bottleneck ResNet-(9n+2) for CIFAR, as in Network Slimming.

    Stages of ``n`` bottlenecks at base widths 16/32/64 (outputs 64/128/256), then a final
    BN-ReLU before the pool, since pre-activation blocks end on a bare conv + add. There is no
    channel-selection layer: pruning engines must handle the BN that precedes each conv.

    Args:
        depth: 164 for the paper's model (``depth = 9n + 2``).
        num_classes: Width of the classifier.
        in_channels: Channels of the input image.
    """

    def __init__(self, depth: int = 164, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 11 or (depth - 2) % 9:
            raise ValueError(f"PreActResNetCifar depth must be 9n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 9
        expansion = PreActBottleneck.expansion
        self.conv1 = conv3x3(in_channels, 16)
        self.layer1 = _stage(PreActBottleneck, 16, 16, n, stride=1)
        self.layer2 = _stage(PreActBottleneck, 16 * expansion, 32, n, stride=2)
        self.layer3 = _stage(PreActBottleneck, 32 * expansion, 64, n, stride=2)
        self.bn = nn.BatchNorm2d(64 * expansion)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64 * expansion, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(*, num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    """ResNet-20 (paper: 0.27M parameters with option A shortcuts)."""
    return ResNetCifar(20, num_classes=num_classes, in_channels=in_channels)


def resnet32(*, num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    """ResNet-32 (paper: 0.46M parameters with option A shortcuts)."""
    return ResNetCifar(32, num_classes=num_classes, in_channels=in_channels)


def resnet56(*, num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    """ResNet-56 (paper: 0.85M parameters with option A shortcuts)."""
    return ResNetCifar(56, num_classes=num_classes, in_channels=in_channels)


def resnet110(*, num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    """ResNet-110 (paper: 1.7M parameters with option A shortcuts)."""
    return ResNetCifar(110, num_classes=num_classes, in_channels=in_channels)


def preresnet164(*, num_classes: int = 10, in_channels: int = 3) -> PreActResNetCifar:
    """Pre-activation ResNet-164 (Network Slimming: 1.70M parameters on CIFAR-10)."""
    return PreActResNetCifar(164, num_classes=num_classes, in_channels=in_channels)

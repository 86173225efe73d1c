"""Building blocks and weight init shared by the CIFAR-style models."""

from __future__ import annotations

from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution with padding 1 and no bias (a BatchNorm always follows or precedes it)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1×1 convolution without bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def init_weights(model: nn.Module) -> None:
    """Initialise ``model`` in place as the papers do.

    Convolutions: He (Kaiming) normal with ``fan_out``, i.e. ``N(0, 2 / (k·k·out))``, the rule of
    both fb.resnet.torch and the Network Slimming code. BatchNorm: ``γ = 1, β = 0``; Network
    Slimming starts ``γ`` at 0.5, we keep the standard 1 because sparsity training drives ``γ``
    down anyway. Linear layers keep PyTorch's default initialisation.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

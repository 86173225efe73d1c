"""Small, fast training fixtures shared by the training and method tests."""
import torch
from torch import nn
from torch.utils.data import TensorDataset


def tiny_net(dropout: float = 0.0, in_channels: int = 1, classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(16, classes))


def separable(n: int, classes: int = 4, size: int = 8, seed: int = 0) -> TensorDataset:
    """Images whose class is which quadrant is bright: learnable in a few epochs by tiny_net."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, size, size, generator=g)
    h = size // 2
    for c in range(classes):
        r, k = divmod(c, 2)
        x[y == c, :, r * h:(r + 1) * h, k * h:(k + 1) * h] += 1.0
    return TensorDataset(x, y)

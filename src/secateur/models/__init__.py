"""The papers' CIFAR-style models, behind a small registry (``create_model``, ``list_models``).

Every model takes ``num_classes`` and ``in_channels``, ends in an adaptive global average pool (so
28×28 Fashion-MNIST and 32×32 CIFAR inputs both work) and is traceable by
``torch.fx.symbolic_trace``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from torch import nn

from secateur.models.densenet import DenseNetCifar, densenet40
from secateur.models.resnet_cifar import (
    PreActResNetCifar,
    ResNetCifar,
    preresnet164,
    resnet20,
    resnet32,
    resnet56,
    resnet110,
)
from secateur.models.vgg import VGG, vgg8, vgg16, vgg19

__all__ = [
    "VGG",
    "DenseNetCifar",
    "PreActResNetCifar",
    "ResNetCifar",
    "create_model",
    "list_models",
]

_REGISTRY: Final[dict[str, Callable[..., nn.Module]]] = {
    "vgg8": vgg8,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "preresnet164": preresnet164,
    "densenet40": densenet40,
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build the registered model ``name`` with random (paper-style) initial weights.

    Raises:
        ValueError: ``name`` is not registered.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}"
        ) from None
    return factory(num_classes=num_classes, in_channels=in_channels)

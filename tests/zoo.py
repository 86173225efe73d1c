"""The model zoo every engine test is parametrised over.

``ZOO`` holds torchvision classification CNNs (random init, ``weights=None``: nothing is ever
downloaded, 10-class heads) and the secateur CIFAR models, each with an input shape (batch 2)
small enough that a forward pass takes well under a second on one CPU core. Builders seed the RNG,
so every build of an entry has the same weights.

Random-init networks are badly scaled (BatchNorm running stats are still 0/1), so relative output
comparisons mean little until :func:`calibrate` has fitted the BatchNorm statistics to real data.

Typical use::

    @pytest.mark.parametrize("entry", zoo_params())
    def test_something(entry: ZooEntry) -> None:
        x = entry.example_input()
        model = calibrate(entry.build(), x)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import pytest
import torch
import torchvision
from _pytest.mark import ParameterSet
from torch import nn

from secateur.models import create_model, list_models

_BATCH = 2
_TV_SIZE = 64
"""Input side for torchvision models: their /32 downsampling leaves a 2×2 map at 64 px."""


@dataclass(frozen=True)
class ZooEntry:
    """A named model builder with the input shape to test it at.

    Attributes:
        name: Unique id: the torchvision model name, or ``secateur/<name>`` for our models.
        build: Returns a fresh, seeded, random-init model in train mode.
        input_shape: ``(batch, channels, height, width)``, batch 2.
        slow: Over 50M parameters: building alone takes 0.5 to 2.5 s on one core.
    """

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    slow: bool = False

    def example_input(self, seed: int = 0) -> torch.Tensor:
        """A standard-normal input of ``input_shape``, reproducible by ``seed``."""
        return torch.randn(self.input_shape, generator=torch.Generator().manual_seed(seed))


def _seeded(
    factory: Callable[..., nn.Module], *args: object, **kwargs: object
) -> Callable[[], nn.Module]:
    """A builder that seeds the global RNG to 0, then calls ``factory(*args, **kwargs)``."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        return factory(*args, **kwargs)

    return build


def _torchvision(
    name: str, size: int | tuple[int, int] = _TV_SIZE, *, slow: bool = False, **kwargs: object
) -> ZooEntry:
    height, width = (size, size) if isinstance(size, int) else size
    build = _seeded(torchvision.models.get_model, name, weights=None, num_classes=10, **kwargs)
    return ZooEntry(name, build, (_BATCH, 3, height, width), slow)


def _secateur(name: str, channels: int = 3, size: int = 32, suffix: str = "") -> ZooEntry:
    build = _seeded(create_model, name, num_classes=10, in_channels=channels)
    return ZooEntry(f"secateur/{name}{suffix}", build, (_BATCH, channels, size, size))


_NO_AUX = {"aux_logits": False, "init_weights": True}

ZOO: list[ZooEntry] = [
    # Plain stacks (no BatchNorm in alexnet / vgg16 / squeezenet) and huge Linear heads.
    _torchvision("alexnet", slow=True),  # needs >= 63 px
    _torchvision("vgg11_bn", slow=True),
    _torchvision("vgg16", slow=True),
    _torchvision("squeezenet1_0"),
    _torchvision("squeezenet1_1"),
    # Residual adds, 1×1 projections, grouped 3×3 convs.
    _torchvision("resnet18"),
    _torchvision("resnet34", (64, 96)),  # the one non-square input
    _torchvision("resnet50"),
    _torchvision("resnet101"),
    _torchvision("resnext50_32x4d"),
    _torchvision("wide_resnet50_2", slow=True),
    _torchvision("regnet_x_400mf"),
    _torchvision("regnet_x_1_6gf"),
    _torchvision("regnet_y_400mf"),  # + squeeze-excitation
    _torchvision("regnet_y_800mf"),
    # Concatenation, channel split and shuffle, multi-branch inception modules.
    _torchvision("densenet121"),
    _torchvision("shufflenet_v2_x0_5"),
    _torchvision("shufflenet_v2_x1_0"),
    _torchvision("googlenet", **_NO_AUX),
    _torchvision("inception_v3", 96, **_NO_AUX),  # needs >= 75 px
    # Depthwise separable convs, inverted residuals, SE, hardswish, stochastic depth.
    _torchvision("mobilenet_v2"),
    _torchvision("mobilenet_v3_small"),
    _torchvision("mobilenet_v3_large"),
    _torchvision("mnasnet0_5"),
    _torchvision("mnasnet1_0"),
    _torchvision("efficientnet_b0"),
    _torchvision("efficientnet_b1"),
    _torchvision("efficientnet_v2_s"),  # + fused MBConv
    # LayerNorm over permuted channels, 7×7 depthwise, Linear inside blocks, layer scale.
    # torchvision's layer_scale init of 1e-6 makes every block's branch invisible in random-init
    # comparisons; 0.1 keeps the architecture and lets the branches count.
    _torchvision("convnext_tiny", layer_scale=0.1),
    # The papers' CIFAR models, plus one at Fashion-MNIST's 28×28×1.
    *(_secateur(name) for name in list_models()),
    _secateur("vgg8", channels=1, size=28, suffix="_fmnist"),
]


def zoo_params(entries: Iterable[ZooEntry] | None = None) -> list[ParameterSet]:
    """``entries`` (default: all of ``ZOO``) as ``pytest.param``s with their names as ids, the
    slow ones marked ``slow``."""
    return [
        pytest.param(e, id=e.name, marks=[pytest.mark.slow] if e.slow else [])
        for e in (ZOO if entries is None else entries)
    ]


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor, *, seed: int = 0) -> nn.Module:
    """Make a random-init ``model``'s activations and outputs O(1) on ``x``; return it in eval mode.

    First every BatchNorm's affine parameters are drawn from ``γ ~ U(0.5, 1.5)``,
    ``β ~ U(-0.2, 0.2)`` (seeded), so channels differ. Then one eval-mode forward pass sets each
    BatchNorm's running mean and (biased) variance, just before it runs, to the statistics of its
    actual input on ``x``. Unlike a train-mode pass this is exact in eval mode: every BatchNorm
    output on ``x`` is ``γ · ẑ + β`` with ``ẑ`` of zero mean and unit variance per channel (up to
    the BatchNorm's ``eps``), and dropout and stochastic depth stay off. A BatchNorm called twice keeps its first statistics.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, _BATCHNORMS) and m.track_running_stats]
    for bn in norms:
        if bn.affine:
            bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
            bn.bias.copy_(0.4 * torch.rand(bn.bias.shape, generator=gen) - 0.2)

    seen: set[nn.Module] = set()

    def fit_stats(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if bn in seen:
            return
        seen.add(bn)
        dims = [d for d in range(args[0].dim()) if d != 1]
        var, mean = torch.var_mean(args[0], dim=dims, correction=0)
        cast(torch.Tensor, bn.running_mean).copy_(mean)
        cast(torch.Tensor, bn.running_var).copy_(var)

    handles = [bn.register_forward_pre_hook(fit_stats) for bn in norms]
    try:
        model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return model

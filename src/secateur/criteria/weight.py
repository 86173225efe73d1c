"""Criteria that need no data: Random, L1/L2 filter norm (Li et al. 2016), BN scale (Liu et al. 2017)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..layers import is_batchnorm
from ..graph import ChannelGroup, Role, Site
from ._base import SiteCriterion, out_rows


@dataclass(frozen=True)
class Random:
    """Uniform random scores: the baseline every criterion must beat. Seeded per group."""

    seed: int = 0

    def __call__(self, group: ChannelGroup, model: nn.Module) -> np.ndarray:
        return np.random.default_rng([self.seed, group.index]).random(group.size)


@dataclass(frozen=True)
class LpNorm(SiteCriterion):
    """Norm of each filter's weights (the output rows of every conv/linear layer in the group).

    ``p=1`` is Li et al.'s "sum of absolute kernel weights"; ``p=2`` the L2 norm. A group with several
    producers (a residual stage) averages them.
    """

    p: int = 1

    def score_site(self, site: Site, module: nn.Module) -> torch.Tensor | None:
        if site.role is not Role.OUT:
            return None
        return out_rows(module).norm(p=self.p, dim=1)


@dataclass(frozen=True)
class L1(LpNorm):
    """Sum of absolute filter weights (Li et al. 2016)."""

    p: int = 1


@dataclass(frozen=True)
class L2(LpNorm):
    """L2 norm of each filter's weights."""

    p: int = 2


@dataclass(frozen=True)
class BNScale(SiteCriterion):
    """|gamma| of the BatchNorm layers in the group (Network Slimming). Groups without a BatchNorm
    are left whole."""

    def score_site(self, site: Site, module: nn.Module) -> torch.Tensor | None:
        if site.role is Role.NORM and is_batchnorm(module) and module.weight is not None:
            return module.weight.detach().abs()
        return None

"""What every criterion shares: per-site scores reduced to one score per unit of a group.

A criterion is any callable ``(group, model) -> np.ndarray`` of ``group.size`` scores (lowest is
removed first), or None to leave the group whole. :class:`SiteCriterion` does the bookkeeping: a
subclass only says how to score the positions of one site; scores of the positions that make up a
unit are summed, and units are averaged over the group's scored sites.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..graph import ChannelGroup, Member, Site
from ..layers import handler_for


class Criterion(Protocol):
    def __call__(self, group: ChannelGroup, model: nn.Module) -> np.ndarray | None: ...


def bind(criterion, model: nn.Module, graph, data) -> Criterion:
    """A data-driven criterion (one with ``bind(model, graph, data)``) records ``data`` and returns the
    criterion that scores from what it saw; any other criterion is returned as it is."""
    if not hasattr(criterion, "bind"):
        return criterion
    if data is None:
        raise ValueError(f"{type(criterion).__name__} scores channels from data: pass data=, a calibration "
                         f"loader of (images, labels), e.g. secateur.data.calibration(dataset, 256)")
    return criterion.bind(model, graph, data)


def out_rows(m: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The weights of each output channel of a conv/linear layer, one row per channel; ``weight``
    (a tensor shaped like ``m.weight``, e.g. its gradient) is laid out the same way instead."""
    return handler_for(m).out_rows(m, weight)


class SiteCriterion:
    """Base for criteria defined site by site. Override :meth:`score_site`."""

    def score_site(self, site: Site, module: nn.Module) -> torch.Tensor | None:
        """One score per channel position of ``site`` (length ``len(site.ids)``), or None to skip it."""
        raise NotImplementedError

    def __call__(self, group: ChannelGroup, model: nn.Module) -> np.ndarray | None:
        total, scored = np.zeros(group.size), 0
        for member in group.members:
            s = self._member(member, model)
            if s is not None:
                total += s
                scored += 1
        return total / scored if scored else None

    def _member(self, member: Member, model: nn.Module) -> np.ndarray | None:
        module = model.get_submodule(member.site.module)
        s = self.score_site(member.site, module)
        if s is None:
            return None
        per_pos = s.detach().double().cpu().numpy()[member.positions]
        return np.bincount(member.unit, weights=per_pos, minlength=int(member.unit.max()) + 1)

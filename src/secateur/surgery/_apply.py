"""Apply a Plan to a model in one pass: fold constant channels, then shrink every touched layer."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

from ..graph import ChannelGroup, Graph, Role, Site
from ..layers import Block, Layer, Weighted, handler_for, take_
from ..plan import Plan, site_masks
from ._verify import verify


def _fold(model: nn.Module, graph: Graph, site: Site, mask: np.ndarray) -> None:
    """Move what removed constant input channels contributed into the layer's bias (or next BN)."""
    values = np.where(mask, np.nan, site.const)
    m = model.get_submodule(site.module)
    delta = handler_for(m).in_contribution(m, values)
    if delta is None:
        return
    with torch.no_grad():
        if m.bias is not None:
            m.bias += delta
        elif site.module in graph.bn_after:
            model.get_submodule(graph.bn_after[site.module]).running_mean -= delta
        else:
            m.bias = nn.Parameter(delta.clone(), requires_grad=m.weight.requires_grad)


def apply(model: nn.Module, graph: Graph, plan: Plan, *, fold: bool = True,
          verify_outputs: bool = True) -> nn.Module:
    """Shrink ``model`` IN PLACE to what ``plan`` keeps; ``graph`` must come from tracing this model
    (or an identical copy). With ``fold``, removed input channels that were constant on the example
    inputs (e.g. a BatchNorm channel with gamma = 0 outputs act(beta)) are folded into the consumer's bias.
    Then the pruned model runs once on the graph's example inputs: if it crashes or its outputs change
    structure or shape, :class:`SurgeryError` names the layer (``verify_outputs=False`` skips this).
    """
    masks = site_masks(graph, plan.unit_masks(graph))
    by_site = [(s, masks[id(s)]) for s in graph.sites if id(s) in masks]
    if fold:
        for s, mask in by_site:
            if s.role is Role.IN and s.const is not None:
                _fold(model, graph, s, mask)
    layers: dict[str, dict[Role, np.ndarray]] = defaultdict(dict)
    for s, mask in by_site:
        if s.role is Role.PARAM:
            owner = model.get_submodule(s.module)
            take_(owner, s.param, s.dim, np.flatnonzero(mask))
            if isinstance(h := handler_for(owner), Layer):
                h.sync_widths(owner)
        else:
            layers[s.module][s.role] = mask
    changed = set(layers) | {s.module for s, _ in by_site if s.role is Role.PARAM}
    for name, roles in layers.items():
        m = model.get_submodule(name)
        h = handler_for(m)
        if isinstance(h, Weighted):
            h.shrink(m, roles.get(Role.IN), roles.get(Role.OUT), name)
        else:
            h.shrink(m, roles[Role.NORM])
    for m in model.modules():   # blocks that store a width of their layers as a plain attribute
        if isinstance(h := handler_for(m), Block):
            h.sync_widths(m)
    if verify_outputs:
        verify(model, graph, changed)
    return model


def silence(model: nn.Module, group: ChannelGroup, units: np.ndarray) -> None:
    """Make ``units`` of ``group`` contribute nothing: zero every weight that reads them.

    Pruning those units afterwards must leave the outputs unchanged (exactly, for exact groups):
    the equivalence that the tests check for every group of every model.
    """
    drop = np.zeros(group.size, bool)
    drop[units] = True
    for m in group.members:
        if m.site.role is Role.IN:
            positions = m.positions[drop[m.unit]]
            if positions.size:
                layer = model.get_submodule(m.site.module)
                handler_for(layer).scale_in(layer, positions, 0.0)

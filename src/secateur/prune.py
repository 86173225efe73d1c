"""``prune``: trace, score, plan and cut in one call, on a copy of the caller's model."""
from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import nn

from .criteria import Criterion, bind
from .graph import Graph, trace
from .plan import Plan, Target, layer_facts, make_plan
from .surgery import apply


def plan_pruning(model: nn.Module, graph: Graph, criterion: Criterion, target: Target, data=None) -> Plan:
    """Score every prunable group of ``graph`` with ``criterion`` and plan for ``target``.

    A data-driven criterion (one with ``bind``) first records ``data``, a calibration loader.
    """
    if not graph.prunable:
        raise ValueError(f"{type(model).__name__} has no prunable layer: every channel group is frozen "
                         f"(print secateur.trace(model, x) to see why)")
    criterion = bind(criterion, model, graph, data)
    scores = {}
    for g in graph.prunable:
        s = criterion(g, model)
        if s is not None:
            scores[g.index] = s
    return make_plan(graph, scores, target, layer_facts(graph, model))


def prune(model: nn.Module, example_inputs, criterion: Criterion, *, amount: float | None = None,
          target_macs: float | None = None, ignore: Iterable = (), min_channels: int = 1,
          round_to: int = 1, global_ranking: bool = False, fold: bool = True, data=None) -> nn.Module:
    """Return a physically smaller copy of ``model``; ``model`` itself is not changed.

    amount: fraction of channels to remove from each group (or network-wide with global_ranking).
    target_macs: fraction of the conv/linear MACs to keep (e.g. 0.5 halves them); the largest plan
        that meets it is chosen.
    ignore: modules (objects or names) whose outputs are kept whole; the classifier always is.
    min_channels: never leave a group with fewer channels. round_to: keep a multiple of N channels.
    global_ranking: one threshold across groups on scores normalised by each group's mean.
    fold: fold removed channels that are constant (e.g. BN with gamma = 0) into the next layer's bias.
    data: a calibration loader of (images, labels) for data-driven criteria (APoZ, Taylor, ThiNet,
        LASSO), e.g. ``secateur.data.calibration(dataset, 256)``; weight criteria ignore it.
    """
    target = Target(amount=amount, macs=target_macs, global_ranking=global_ranking,
                    min_channels=min_channels, round_to=round_to)
    graph = trace(model, example_inputs, ignore=ignore)
    plan = plan_pruning(model, graph, criterion, target, data)
    return apply(copy.deepcopy(model), graph, plan, fold=fold)

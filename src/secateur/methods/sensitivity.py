"""Li et al.'s sensitivity scan: prune each layer alone at several rates, evaluate, and turn the curves
into per-layer ratios that ``secateur.prune(..., amount=ratios)`` accepts.

    curves = sensitivity(model, x, test_loader)               # {"features.0": [(0.0, 0.91), (0.1, 0.91), ...]}
    ratios = sensitivity_ratios(curves, tolerance=0.01)       # the largest rate within 1 pt, per layer
    small = secateur.prune(model, x, L1(), amount=ratios)

A "layer" is a prunable channel group, named by its first producer (a residual stage is one layer, as
its channels can only go together). Scores are computed once; every point cuts a fresh copy.
"""
from __future__ import annotations

import copy

from torch import nn
from ..criteria import L1, Criterion
from ..graph import Role, trace
from ..plan import Target
from ..prune import score
from .allocation import Judge

RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def sensitivity(model: nn.Module, example_inputs, eval_loader, *, criterion: Criterion = L1(),
                rates=RATES, ignore=(), data=None, progress: bool = True) -> dict[str, list[tuple[float, float]]]:
    """Accuracy on ``eval_loader`` with each prunable layer alone pruned at each rate (rate 0 = the
    unpruned model), per layer name. The caller's model is not changed."""
    if not rates or any(not 0 < r < 1 for r in rates):
        raise ValueError(f"rates={tuple(rates)!r} must be fractions in (0, 1)")
    model = copy.deepcopy(model).eval()
    graph = trace(model, example_inputs, ignore=ignore)
    judge = Judge(model, graph, score(model, graph, criterion, data), Target(amount=0.0), None, eval_loader)
    groups = [g for g in graph.prunable if g.index in judge.scores and g.modules(Role.OUT)]
    curves = judge.curves([g.index for g in groups], rates, progress, "sensitivity")
    return {g.modules(Role.OUT)[0]: curves[g.index] for g in groups}


def sensitivity_ratios(curves: dict[str, list[tuple[float, float]]], *, tolerance: float = 0.01) -> dict[str, float]:
    """Per layer, the largest scanned rate whose accuracy stays within ``tolerance`` of the unpruned
    model's (rate 0), and no higher rate below it failed; layers that tolerate none are left out."""
    if not tolerance >= 0:
        raise ValueError(f"tolerance={tolerance!r} must be >= 0 (an accuracy drop, e.g. 0.01 for 1 point)")
    out = {}
    for name, points in curves.items():
        base = dict(points).get(0.0, max(a for _, a in points))
        best = 0.0
        for r, acc in sorted(points):
            if r == 0.0:
                continue
            if acc < base - tolerance:
                break
            best = r
        if best > 0:
            out[name] = best
    return out

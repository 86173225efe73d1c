"""``prune``: trace, score, plan and cut in one call, on a copy of the caller's model."""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from . import runtimes
from .criteria import Criterion, bind
from .forward import eval_mode
from .measure import count_macs
from .graph import Graph, Role, trace
from .plan import Plan, Target, TargetError, estimate_macs, layer_facts, make_plan
from .surgery import apply


def plan_pruning(model: nn.Module, graph: Graph, criterion: Criterion, target: Target, data=None) -> Plan:
    """Score every prunable group of ``graph`` with ``criterion`` and plan for ``target``.

    A data-driven criterion (one with ``bind``) first records ``data``, a calibration loader.
    """
    return make_plan(graph, score(model, graph, criterion, data), target, layer_facts(graph))


def score(model: nn.Module, graph: Graph, criterion: Criterion, data=None) -> dict[int, np.ndarray]:
    """Unit scores of every prunable group that ``criterion`` scores, by group index."""
    if not graph.prunable:
        raise ValueError(f"{type(model).__name__} has no prunable layer: every channel group is frozen "
                         f"(print secateur.trace(model, x) to see why)")
    criterion = bind(criterion, model, graph, data)
    scores = {}
    for g in graph.prunable:
        s = criterion(g, model)
        if s is None:
            continue
        if not np.isfinite(s).all():
            raise ValueError(f"criterion {type(criterion).__name__} gave non-finite scores (nan/inf) to group "
                             f"#{g.index} ({', '.join(g.modules(Role.OUT)[:3]) or g.members[0].site}): "
                             f"check the model's weights and the calibration data")
        scores[g.index] = s
    return scores


def plan_per_layer(model: nn.Module, graph: Graph, criterion: Criterion, ratios: Mapping[str, float], *,
                   min_channels: int = 1, round_to: int = 1, data=None) -> Plan:
    """A plan removing ``ratios[name]`` of the channels that layer ``name`` produces (e.g. from a
    sensitivity scan); a group produced by several named layers takes the smallest of their ratios,
    groups of unnamed layers stay whole."""
    producers = {n: g for g in graph.prunable for n in g.modules(Role.OUT)}
    unknown = [n for n in ratios if n not in producers]
    if unknown:
        raise ValueError(f"amount names layer {unknown[0]!r}, which produces no prunable channel group; "
                         f"choose from: {', '.join(producers) or '(none)'}")
    rate: dict[int, float] = {}
    for name, r in ratios.items():
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ValueError(f"amount[{name!r}]={r!r} must be in [0, 1): the fraction of that layer's channels "
                             f"to remove")
        g = producers[name].index
        rate[g] = min(rate.get(g, 1.0), r)
    return make_plan(graph, score(model, graph, criterion, data),
                     Target(amount=rate, min_channels=min_channels, round_to=round_to), layer_facts(graph))


LATENCY_LIMITS = (0.5, 0.75, 0.9, 1.0)   # max_amount's steps for a latency target, tightest first
KNEE = 1.05   # a latency target out of reach: the cut keeping the most within 5 % of the fastest measured


def prune(model: nn.Module, example_inputs, criterion: Criterion, *,
          amount: float | Mapping[str, float] | None = None,
          target_macs: float | None = None, target_latency: float | None = None, runtime: str = "torch",
          threads: int = 1, ignore: Iterable = (), min_channels: int = 1,
          round_to: int = 1, global_ranking: bool = False, max_amount: float | None = None, fold: bool = True,
          data=None, progress: bool = True) -> nn.Module:
    """Return a physically smaller copy of ``model``; ``model`` itself is not changed.

    amount: fraction of channels to remove from each group (or network-wide with global_ranking), or
        per layer: ``{"features.0": 0.3, ...}`` (e.g. ``secateur.methods.sensitivity_ratios(...)``).
    target_macs: fraction of the MACs to keep (e.g. 0.5 halves them), as the cut model really runs them.
    target_latency: fraction of the latency to keep, measured on ``runtime`` (a ``secateur.runtimes``
        name: "torch", "onnxruntime", "openvino", ...) on ``threads`` CPU threads at the batch of
        ``example_inputs``: planned on per-layer latency tables of that runtime (timed once, cached
        on disk; widths snap to the stairs of its blocked layouts), then measured (the median of 3
        independent loads of the cut and the original, each pair timed in alternating rounds) and
        re-planned until within 5 % of the target; past what the runtime reaches, the cut keeping the
        most within 5 % of the fastest measured, with a warning.
    ignore: modules (objects or names) whose outputs are kept whole; the classifier always is.
    min_channels: never leave a group with fewer channels. round_to: keep a multiple of N channels.
    global_ranking: one threshold across groups on scores normalised by each group's mean.
    max_amount: the most of any one group that may go (Torch-Pruning's max_pruning_ratio), so a global
        ranking cannot thin a layer down to a bottleneck. Default 1.0; with ``target_latency`` the
        first of 0.5, 0.75, 0.9, 1.0 under which the table can meet the goal: planned on importance per
        millisecond alone, the latency plan thins the high-resolution layers to a few channels (VGG-8 on
        Fashion-MNIST at half the ONNX Runtime latency, batch 64: 0.899 after a 1-epoch fine-tune
        without a limit, 0.925 with at most half of any group, at the same measured latency).
    fold: fold removed channels that are constant (e.g. BN with gamma = 0) into the next layer's bias.
    data: a calibration loader of (images, labels) for data-driven criteria (APoZ, Taylor, ThiNet,
        LASSO), e.g. ``secateur.data.calibration(dataset, 256)``; weight criteria ignore it.
    progress: show a progress bar while a latency table is timed.
    """
    if target_latency is not None:
        if amount is not None or target_macs is not None:
            raise ValueError("give exactly one of amount=, target_macs= and target_latency=")
        if not (isinstance(target_latency, (int, float)) and 0 < target_latency <= 1):
            raise ValueError(f"target_latency={target_latency!r} must be in (0, 1]: the fraction of the latency to keep")
        runtimes.backend(runtime)   # a missing runtime is one line, before any work
    graph = trace(model, example_inputs, ignore=ignore)
    if isinstance(amount, Mapping):
        if target_macs is not None or global_ranking or max_amount not in (None, 1.0):
            raise ValueError("per-layer amounts cannot be combined with target_macs=, global_ranking= or max_amount=")
        plan = plan_per_layer(model, graph, criterion, amount, min_channels=min_channels, round_to=round_to,
                              data=data)
        return apply(copy.deepcopy(model), graph, plan, fold=fold)
    limits = (max_amount,) if max_amount is not None else LATENCY_LIMITS if target_latency is not None else (1.0,)
    target = Target(amount=amount, macs=target_latency if target_latency is not None else target_macs,
                    global_ranking=global_ranking, min_channels=min_channels, round_to=round_to,
                    max_amount=limits[0])
    scores, facts = score(model, graph, criterion, data), layer_facts(graph)
    costs = None
    if target_latency is not None:
        costs = runtimes.latency_table(model, graph, runtime, threads=threads, progress=progress)

    def replan(goal: float) -> tuple[Plan, float]:   # the plan, and the goal it was planned for
        for limit in limits:   # the tightest limit on any one group that can reach the goal
            try:
                return make_plan(graph, scores, replace(target, macs=goal, max_amount=limit), facts, costs), goal
            except TargetError as e:
                missed = e
        if costs is None or missed.reachable is None or not missed.reachable > goal:
            raise missed
        # past the table's floor: plan the floor, and let the measurement judge
        floor = min(1.0, missed.reachable * 1.001)
        return make_plan(graph, scores, replace(target, macs=floor, max_amount=limits[-1]), facts, costs), floor
    if target.macs is None:
        return apply(copy.deepcopy(model), graph, make_plan(graph, scores, target, facts), fold=fold)
    first = replan(target.macs)   # a target the planner cannot meet fails here, before anything is measured
    if target_latency is not None:
        ratio_of = runtimes.ratio_to(model, graph.example_inputs, runtime, threads=threads, sessions=3, rounds=2)
        return _timed_cut(model, graph, replan, first, target.macs, fold, ratio_of)
    if target_macs is not None:
        base = _macs(model, graph)
        if abs(base - estimate_macs(graph, facts, {})) > 1e-3 * base:   # not all MACs are in conv/linear
            return _cut_until(model, graph, replan, target.macs, fold, lambda small: _macs(small, graph) / base,
                              band=(0.99, 1.0), first=first)[0]
    return apply(copy.deepcopy(model), graph, first[0], fold=fold)


def _macs(model: nn.Module, graph: Graph) -> int:
    with torch.no_grad(), eval_mode(model):
        return count_macs(copy.deepcopy(model), graph.example_inputs)


def _cut_until(model, graph: Graph, replan, aim: float, fold: bool, ratio_of, *, band: tuple[float, float],
               timed: bool = False, tries: int = 5, tried: list | None = None,
               first: tuple[Plan, float] | None = None) -> tuple[nn.Module, float, bool, bool]:
    """Cut by ``first`` (a ``replan`` result; by default ``replan``'s plan for ``aim``, or for the next
    goal on ``tried``'s pairs), measure ``ratio_of(cut)``; while it is outside ``aim`` times ``band``,
    plan again for a corrected goal (the planner predicts conv and linear MACs or layer latencies;
    attention's matrix products or a whole runtime shrink differently): :func:`next_goal`. Returns the
    first cut within the band, else the closest (at or under the aim preferred), its ratio, whether it
    is in the band, and whether the planner could go no further; ``tried`` gains every (goal planned
    for, ratio measured). A ``timed`` ratio that lands in the band is timed once more and the two
    averaged before it is accepted (one timing on a busy machine moves by a few per cent)."""
    tried = [] if tried is None else tried
    plan, goal = first if first is not None else replan(next_goal(tried, aim) if tried else aim)
    best, stuck = None, False
    for _ in range(tries):
        small = apply(copy.deepcopy(model), graph, plan, fold=fold)
        got = ratio_of(small)
        if timed and band[0] * aim <= got <= band[1] * aim:
            got = (got + ratio_of(small)) / 2
        rank = (band[0] * aim <= got <= band[1] * aim, got <= aim, -abs(got - aim))
        if best is None or rank > best[0]:
            best = (rank, small, got)
        tried.append((goal, got))
        if rank[0]:
            break
        last = plan
        try:
            plan, goal = replan(next_goal(tried, aim))
        except ValueError:
            stuck = True
            break
        if plan == last:   # the planner can go no further that way: nothing new to measure
            stuck = True
            break
    return best[1], best[2], best[0][0], stuck


def _timed_cut(model, graph: Graph, replan, first, aim: float, fold: bool, ratio_of) -> nn.Module:
    """The cut within 5 % of the latency ``aim``, measured. Past what the runtime can reach (the
    planner at the table's floor, or a goal 20 % lower measuring under 3 % faster: a runtime's fixed
    costs), the fastest cut measured, ``floor``, bought its last per cent with most of the channels
    (PyTorch eager, batch 1: VGG-8 on Fashion-MNIST at 0.70 with 0.04 of the MACs): then the cut
    keeping the most within ``KNEE`` of ``floor`` is returned, with a warning. ``first``: the plan
    for ``aim``, made before anything was measured."""
    tried: list[tuple[float, float]] = []
    # not narrower: with a 3 % band, where one cut's timings move by +-6 % (ResNet-50, PyTorch eager, batch
    # 16), the tries wandered (0.481, 0.531, 0.474, 0.456) and the cut accepted read 0.61 when timed again.
    # Those runs were half page faults; timed in forward.kept_memory, the same model lands 0.491 within
    # the 5 % band (benchmarks/LATENCY.md, footnotes 8 and 9)
    small, got, met, stuck = _cut_until(model, graph, replan, aim, fold, ratio_of, band=(0.95, 1.05), timed=True,
                                        tries=8, tried=tried, first=first)
    if met:
        return small
    flat = any(g2 <= 0.8 * g1 and r2 >= 0.97 * r1 for g1, r1 in tried for g2, r2 in tried)
    if got > aim and (stuck or flat):   # slower than asked, and cutting more stopped paying: the knee
        floor, fastest = got, small
        goal_at_floor = min((g for g, r in tried if r == floor), default=aim)
        try:
            small, got, met, _ = _cut_until(model, graph, replan, floor * KNEE, fold, ratio_of, band=(0.95, 1.0),
                                            timed=True, tries=4, tried=[(goal_at_floor, floor)])
        except ValueError:   # no plan above the floor: the fastest cut stays
            pass
        if not (met or got <= floor * KNEE):
            small, got = fastest, floor
        warnings.warn(f"secateur.prune: target_latency={aim} is past what the runtime reaches (the fastest cut "
                      f"measured {floor:.3f} of the baseline's latency); returning the cut that keeps the most "
                      f"within {KNEE - 1:.0%} of that, measured {got:.3f}", RuntimeWarning, stacklevel=3)
        return small
    tries = ", ".join(f"{r:.3f} (planned for {g:.3f})" for g, r in tried)
    warnings.warn(f"secateur.prune: measured {got:.3f} of the baseline's latency, not within 5 % "
                  f"of target_latency={aim}; returning the closest cut (tries: {tries})", RuntimeWarning,
                  stacklevel=3)
    return small


def next_goal(tried: list[tuple[float, float]], aim: float) -> float:
    """The planner's next goal, from the (goal, measured ratio) pairs tried so far: inside the bracket
    when one goal measured under the aim and a larger one over it; else on the line through
    the two nearest the aim when it rises with the goal (a runtime's fixed cost makes the measured ratio
    an affine, not a proportional, function of the goal), else the last goal scaled by aim / measured,
    then never more than twice or less than half the last goal, and in [1e-3, 1]."""
    under = [p for p in tried if p[1] < aim]
    over = [p for p in tried if p[1] > aim]
    if under and over and max(under)[0] < min(over)[0]:
        # the tries bracket the aim: stay inside the bracket, on the line through its ends, and at least
        # a tenth of its width from either (a line through the nearest two can land on a goal already
        # tried: a runtime with a cliff, 0.755 at 0.5, 0.623 at 0.331, 0.170 at 0.173, asked 0.173 again)
        (g0, r0), (g1, r1) = max(under), min(over)
        inside = g0 + (aim - r0) * (g1 - g0) / (r1 - r0)
        return min(max(inside, g0 + 0.1 * (g1 - g0)), g1 - 0.1 * (g1 - g0))
    goal, got = tried[-1]
    scaled = goal * aim / got
    near = sorted(tried, key=lambda p: abs(p[1] - aim))[:2]
    if len(near) == 2 and near[0][0] != near[1][0]:
        (g0, r0), (g1, r1) = near
        slope = (r1 - r0) / (g1 - g0)
        if slope > 0:
            scaled = g0 + (aim - r0) / slope
    return min(1.0, max(1e-3, goal / 2, min(2 * goal, scaled)))

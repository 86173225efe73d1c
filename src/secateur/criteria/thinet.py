"""ThiNet (Luo, Wu & Lin, ICCV 2017): judge layer i's filters by how well the rest rebuild layer i+1.

For m samples (image, output channel d, location) of a consumer (layer i+1) the contribution of
input unit c is ``x_c = sum_k W[d, c, k] * window_c[k]``; the output without bias is ``y = sum_c x_c``.
The removed set T is built greedily: each step adds the unit j minimising ``sum_s (sum_{k in T+j} x_k)^2``.

Everything is computed from the Gram matrix ``G = X^T X`` (units x units), accumulated batch by batch,
so memory is O(C^2) whatever m is: adding j to T costs ``2 r_j + G_jj`` with ``r = G[T].sum(0)``
kept up to date, O(C) per candidate and O(C^2) for the whole greedy order (plus O(C^2 m) for G).
The least-squares scales of the kept units come from G too: ``X^T y = G 1``.
A group read by several layers sums their objectives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..graph import ChannelGroup, Graph
from ._windows import Consumer, consumers, readable, sample, unit_sum, weight_matrix


def greedy_order(gram: torch.Tensor) -> np.ndarray:
    """All units in ThiNet's greedy removal order (first = removed first), from ``G = X^T X``."""
    g = gram.double()
    n = g.shape[0]
    r, diag = torch.zeros(n, dtype=g.dtype, device=g.device), g.diagonal().clone()
    taken = torch.zeros(n, dtype=torch.bool, device=g.device)
    order = []
    for _ in range(n):
        cost = (2 * r + diag).masked_fill(taken, float("inf"))
        j = int(torch.argmin(cost))
        order.append(j)
        taken[j] = True
        r += g[j]
    return np.asarray(order)


def naive_greedy(x: torch.Tensor, remove: int) -> np.ndarray:
    """The same greedy choice recomputed from the samples for every candidate: O(C^2 m |T|).

    The reference that :func:`greedy_order` is checked and benchmarked against; do not use it."""
    x = x.double()
    chosen: list[int] = []
    for _ in range(remove):
        base = x[:, chosen].sum(1) if chosen else torch.zeros(x.shape[0], dtype=x.dtype)
        best, best_cost = -1, float("inf")
        for j in range(x.shape[1]):
            if j in chosen:
                continue
            cost = float(((base + x[:, j]) ** 2).sum())
            if cost < best_cost:
                best, best_cost = j, cost
        chosen.append(best)
    return np.asarray(chosen)


def scales(gram: torch.Tensor, keep: np.ndarray) -> torch.Tensor:
    """Least-squares ``w = argmin sum_s (y - sum_{j in keep} w_j x_j)^2`` with ``y = sum_c x_c``."""
    g = gram.double()
    k = torch.as_tensor(keep, dtype=torch.long, device=g.device)
    gss, rhs = g[k][:, k], g[k].sum(1)
    ridge = 1e-10 * gss.diagonal().mean().clamp_min(1e-300) * torch.eye(len(k), dtype=g.dtype, device=g.device)
    return torch.linalg.solve(gss + ridge, rhs)


class GramSink:
    """Accumulates ThiNet's ``X^T X`` for one consumer of one group."""

    SUMS = ("gram", "m")   # running sums over the data, summed over processes under torchrun

    def __init__(self, layer: nn.Module, consumer: Consumer, units: int):
        self.w = weight_matrix(layer)[:, torch.as_tensor(consumer.positions, dtype=torch.long)].float()
        self.unit, self.units, self.gram, self.m = consumer.unit, units, None, 0

    def __call__(self, windows: torch.Tensor, outputs: torch.Tensor, draws: torch.Tensor) -> None:
        contrib = (self.w.to(windows.device)[draws] * windows).sum(-1)          # (S, P)
        x = unit_sum(contrib.double(), self.unit, self.units)                    # (S, U)
        g = x.T @ x
        self.gram = g if self.gram is None else self.gram + g
        self.m += x.shape[0]


def thinet_grams(model: nn.Module, graph: Graph, groups: list[ChannelGroup], data, *, samples: int | None,
                 seed: int) -> dict[int, list[tuple[Consumer, GramSink]]]:
    """One calibration pass; for every group, its consumers and their accumulated Gram matrices."""
    per_group = {g.index: [(c, GramSink(model.get_submodule(c.name), c, g.size)) for c in consumers(model, g)]
                 for g in groups}
    sample(model, data, [item for items in per_group.values() for item in items], samples=samples, seed=seed,
           input_shape=graph.input_shapes[0], pairs=True)
    return per_group


def group_gram(items: list[tuple[Consumer, GramSink]]) -> torch.Tensor:
    return sum(s.gram for _, s in items)


@dataclass(frozen=True)
class ThiNet:
    """ThiNet's greedy selection as a criterion for :func:`secateur.prune`: a unit's score is its place
    in the greedy removal order (removed first = lowest), so any amount removes ThiNet's set T.

    This scores only; :func:`secateur.methods.thinet` also rescales the kept channels by least squares
    and prunes layer by layer. Groups that no dense conv/Linear reads (or that a grouped conv reads)
    are left whole. samples: the paper's m, spread over the calibration images (None: 10 per image).
    """

    samples: int | None = None
    seed: int = 0

    def bind(self, model: nn.Module, graph: Graph, data) -> "Ranked":
        usable = [g for g in graph.prunable if readable(model, g)]
        grams = thinet_grams(model, graph, usable, data, samples=self.samples, seed=self.seed)
        return Ranked({g: greedy_order(group_gram(items)) for g, items in grams.items()})


@dataclass(frozen=True)
class Ranked:
    """Scores from an importance order per group (``order[g]``: unit indices, least important first)."""

    order: dict[int, np.ndarray]

    def __call__(self, group: ChannelGroup, model: nn.Module) -> np.ndarray | None:
        order = self.order.get(group.index)
        if order is None:
            return None
        scores = np.empty(group.size)
        scores[order] = np.arange(1, group.size + 1)
        return scores

"""Channel selection by LASSO and least-squares reconstruction (He, Zhang & Sun, ICCV 2017).

For a layer that reads a group, with N sampled input windows ``X`` and targets ``Y (N, out)``:
``min ||Y - sum_i beta_i X_i W_i^T||^2 + lambda |beta|_1`` with at most c' non-zero ``beta``, then
least squares for the kept weights. Both need only second moments, accumulated batch by batch:
``C = X^T X`` ((P k^2)^2) and ``D = X^T Y``. The LASSO's Gram ``A_uv = sum <X_u W_u^T, X_v W_v^T>``
and ``b_u = <X_u W_u^T, Y>`` follow from C, D and W without forming the (N, out, units) tensor.

Solver (our choice): scikit-learn's ``lars_path_gram``, the exact LASSO path computed from (A, b)
alone. The paper raises lambda until at most c' channels are left; on the exact path that is the
last breakpoint with <= c' non-zeros, found without a search over lambda. One selection and one
least-squares solve per layer (the paper alternates; its released code stops after one round too).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..graph import Graph
from ._windows import Consumer, consumers, readable, sample, unit_sum, weight_matrix
from .thinet import Ranked

MAX_INPUTS = 4608   # P * k^2 above this (VGG-16: 512 channels x 3x3): C, W^T W would each pass 170 MB


class LassoSink:
    """Accumulates ``C = X^T X`` and ``D = X^T Y`` for one consumer of one group.

    ``targets``: the original network's outputs at the same samples, batch by batch (a list to pop
    from); the target is then ``Y_orig - (this layer's output - the group's contribution)``, i.e. what
    the group must produce for the layer to match the original. Without targets the group's own
    current contribution is the target (selection only).
    """

    SUMS = ("c", "d", "n")   # running sums over the data, summed over processes under torchrun

    def __init__(self, layer: nn.Module, consumer: Consumer, units: int, targets: list | None = None):
        w = weight_matrix(layer)[:, torch.as_tensor(consumer.positions, dtype=torch.long)]
        self.k = w.shape[2]
        if w.shape[1] * self.k > MAX_INPUTS:
            raise ValueError(f"{consumer.name} reads {w.shape[1]} x {self.k} inputs of this group; least squares "
                             f"over more than {MAX_INPUTS} is too large: leave this layer out (layers=)")
        self.w = w.reshape(w.shape[0], -1).double()                            # (out, P k)
        self.unit = np.repeat(consumer.unit, self.k)
        self.units, self.targets = units, targets
        self.c = self.d = None
        self.n = 0

    def __call__(self, windows: torch.Tensor, outputs: torch.Tensor, draws: torch.Tensor) -> None:
        x = windows.reshape(windows.shape[0], -1).double()
        own = x @ self.w.to(x.device).T                                          # (S, out)
        y = own if self.targets is None else self.targets.pop(0).to(x.device).double() - (outputs.double() - own)
        c, d = x.T @ x, x.T @ y
        self.c, self.d = (c, d) if self.c is None else (self.c + c, self.d + d)
        self.n += x.shape[0]

    def lasso_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, b) of the LASSO over this group's units."""
        w = self.w.to(self.c.device)
        e = (w.T @ w) * self.c
        a = unit_sum(unit_sum(e, self.unit, self.units).T, self.unit, self.units)
        b = unit_sum((w.T * self.d).sum(1), self.unit, self.units)
        return a, b

    def reconstruct_(self, layer: nn.Module, consumer: Consumer, keep_units: np.ndarray) -> None:
        """Least-squares weights for the kept units' inputs, written into ``layer`` in place."""
        keep = np.isin(self.unit, keep_units)
        k = torch.as_tensor(np.flatnonzero(keep), device=self.c.device)
        ckk = self.c[k][:, k]
        ridge = 1e-8 * ckk.diagonal().mean().clamp_min(1e-300) * torch.eye(len(k), dtype=ckk.dtype, device=ckk.device)
        new = torch.linalg.solve(ckk + ridge, self.d[k]).T                       # (out, kept P k)
        pos = torch.as_tensor(consumer.positions[np.isin(consumer.unit, keep_units)], dtype=torch.long)
        with torch.no_grad():
            shape = (layer.weight.shape[0], len(pos), *layer.weight.shape[2:])
            layer.weight[:, pos] = new.reshape(shape).to(layer.weight)


def lasso_path(a: torch.Tensor, b: torch.Tensor, n: int) -> np.ndarray:
    """Coefficients along the exact LASSO path (units x breakpoints), from the Gram form."""
    from sklearn.linear_model import lars_path_gram
    _, _, coefs = lars_path_gram(Xy=b.cpu().numpy(), Gram=a.cpu().numpy(), n_samples=max(n, 1), method="lasso",
                                 max_iter=10 * a.shape[0])
    return np.atleast_2d(coefs)


def entry_order(coefs: np.ndarray, a: torch.Tensor) -> np.ndarray:
    """Units from least to most important: last to enter the path first; never-entered by diag(A)."""
    nz = coefs != 0
    first = np.where(nz.any(1), nz.argmax(1), coefs.shape[1])
    return np.lexsort((a.diagonal().cpu().numpy(), -first))


def select(a: torch.Tensor, b: torch.Tensor, n: int, keep: int) -> np.ndarray:
    """The units kept with lambda raised until at most ``keep`` are non-zero (filled up in path order
    when the path ends with fewer)."""
    coefs = lasso_path(a, b, n)
    nnz = (coefs != 0).sum(0)
    col = int(np.flatnonzero(nnz <= keep).max())
    chosen = list(np.flatnonzero(coefs[:, col]))
    for u in entry_order(coefs, a)[::-1]:
        if len(chosen) >= keep:
            break
        if u not in chosen:
            chosen.append(int(u))
    return np.sort(np.asarray(chosen[:keep], dtype=np.int64))


@dataclass(frozen=True)
class LASSO:
    """He et al.'s LASSO selection as a criterion for :func:`secateur.prune`: a unit's score is when it
    enters the LASSO path (as lambda falls), so any amount keeps the channels LASSO keeps longest.

    This scores only; :func:`secateur.methods.channel_pruning` also rebuilds the next layer's weights
    by least squares against the original network, layer by layer. samples: windows spread over the
    calibration images (None: 10 per image, as in the paper).
    """

    samples: int | None = None
    seed: int = 0

    def bind(self, model: nn.Module, graph: Graph, data) -> Ranked:
        order = {}
        for chunk in _chunks(model, [g for g in graph.prunable if readable(model, g)]):
            sinks = {g.index: [(c, LassoSink(model.get_submodule(c.name), c, g.size)) for c in consumers(model, g)]
                     for g in chunk}
            sample(model, data, [it for items in sinks.values() for it in items], samples=self.samples,
                   seed=self.seed, input_shape=graph.input_shapes[0])
            for g, items in sinks.items():
                a, b = group_terms(items)
                order[g] = entry_order(lasso_path(a, b, items[0][1].n), a)
        return Ranked(order)


BUDGET = 256 * 2**20   # bytes of second moments held at once; more groups take more calibration passes


def _chunks(model: nn.Module, groups: list) -> list[list]:
    """Groups split so that one pass holds at most BUDGET bytes of C = X^T X (float64)."""
    out, size = [[]], 0
    for g in groups:
        need = sum((len(c.positions) * weight_matrix(model.get_submodule(c.name)).shape[2]) ** 2 * 8
                   for c in consumers(model, g))
        if out[-1] and size + need > BUDGET:
            out.append([])
            size = 0
        out[-1].append(g)
        size += need
    return [c for c in out if c]


def group_terms(items: list[tuple[Consumer, LassoSink]]) -> tuple[torch.Tensor, torch.Tensor]:
    terms = [s.lasso_terms() for _, s in items]
    return sum(t[0] for t in terms), sum(t[1] for t in terms)


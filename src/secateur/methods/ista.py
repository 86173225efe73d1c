"""ISTA on BN scales (Ye et al., ICLR 2018): a proximal L1 step drives gamma to exact zeros, which are
then removed with their constant output folded into the next layer, so nothing changes but the size.

    result = ista(model, train_loader, x, ISTA(rho=1e-3, alpha=1.0), eval_loader=test_loader)

gamma-W rescaling: before training, each BN's gamma and beta are multiplied by ``alpha`` and the
weights that read its channels by 1/alpha, where that provably leaves the outputs unchanged (checked
numerically, group by group: it holds through ReLU, not through e.g. SiLU or a residual add); the
penalty then acts on the rescaled gamma. It is undone after training.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..criteria import BNScale
from ..forward import eval_mode
from ..graph import Graph, Role, trace
from ..plan import Target
from ..prune import plan_pruning
from ..surgery import apply
from ..layers import handler_for, is_batchnorm
from ..train import Callback, Optim
from ._common import Result, Stages, bn_layers, check_epochs, record
from ._registry import Data, Method, register


class ProximalL1(Callback):
    """After each optimiser step: gamma <- sign(gamma) * max(|gamma| - lr * rho, 0), per BN layer."""

    def __init__(self, penalties: dict[str, float]):
        if bad := [(n, r) for n, r in penalties.items() if not r >= 0]:
            raise ValueError(f"rho={bad[0][1]!r} for {bad[0][0]} must be >= 0")
        self.penalties = dict(penalties)
        self._gammas: list[tuple[nn.Parameter, float]] = []

    def on_fit_begin(self, model: nn.Module) -> None:
        self._gammas = [(model.get_submodule(n).weight, r) for n, r in self.penalties.items() if r > 0]

    def after_step(self, model: nn.Module, lr: float) -> None:
        with torch.no_grad():
            for w, rho in self._gammas:
                w.copy_(torch.sign(w) * torch.clamp(w.abs() - lr * rho, min=0))


@dataclass(frozen=True)
class ISTA:
    """rho: the L1 penalty on gamma. alpha: gamma-W rescaling factor (1 = none). cost_weighted: scale
    each layer's rho by its MACs per channel (divided by the mean), so costly layers sparsify first."""

    rho: float = 1e-3
    alpha: float = 1.0
    cost_weighted: bool = False
    sparsity_epochs: int = 10
    finetune_epochs: int = 10
    min_channels: int = 1
    optim: Optim = field(default_factory=Optim)
    finetune_optim: Optim | None = None

    def __post_init__(self):
        if not (isinstance(self.rho, (int, float)) and self.rho >= 0):
            raise ValueError(f"rho={self.rho!r} must be >= 0")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0 and np.isfinite(self.alpha)):
            raise ValueError(f"alpha={self.alpha!r} must be a finite number > 0")
        check_epochs(sparsity_epochs=self.sparsity_epochs, finetune_epochs=self.finetune_epochs)
        Target(threshold=0.0, min_channels=self.min_channels)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _rescalable(graph: Graph, model: nn.Module) -> list[int]:
    """Groups read only by conv/linear layers, with exactly one BN and no other norm or parameter."""
    out = []
    for g in graph.prunable:
        roles = [(m.site.role, model.get_submodule(m.site.module)) for m in g.members]
        norms = [mod for r, mod in roles if r is Role.NORM]
        if len(norms) == 1 and is_batchnorm(norms[0]) and all(r in (Role.IN, Role.OUT, Role.NORM)
                                                                 for r, _ in roles):
            out.append(g.index)
    return out


def _touched(graph: Graph, model: nn.Module, g: int) -> list[torch.Tensor]:
    """The parameters that rescaling group ``g`` changes."""
    out = []
    for m in graph.groups[g].members:
        module = model.get_submodule(m.site.module)
        out += [module.weight, module.bias] if m.site.role is Role.NORM else [module.weight]
    return out


def _scale(graph: Graph, model: nn.Module, g: int, alpha: float) -> None:
    for m in graph.groups[g].members:
        module = model.get_submodule(m.site.module)
        pos = torch.as_tensor(m.positions, dtype=torch.long)
        if m.site.role is Role.NORM:
            with torch.no_grad():
                module.weight[pos] *= alpha
                module.bias[pos] *= alpha
        elif m.site.role is Role.IN:
            handler_for(module).scale_in(module, m.positions, 1.0 / alpha)


@torch.no_grad()
def rescale(model: nn.Module, graph: Graph, alpha: float, example_inputs, groups: Iterable[int] | None = None,
            tol: float = 1e-4) -> list[int]:
    """gamma-W rescaling IN PLACE: BN gamma and beta times ``alpha``, the weights reading them divided
    by it, for every group (or ``groups``) where the outputs stay the same (relative error < ``tol``,
    checked one group at a time; a group that fails is restored). Returns the rescaled groups; call
    again with ``1 / alpha`` and those groups to undo."""
    if alpha == 1:
        return []
    done = []
    with eval_mode(model):
        reference = model(example_inputs)
        for g in (_rescalable(graph, model) if groups is None else groups):
            saved = [p.clone() for p in _touched(graph, model, g)]
            _scale(graph, model, g, alpha)
            if _rel_err(model(example_inputs), reference) < tol:
                done.append(g)
            else:
                for p, old in zip(_touched(graph, model, g), saved):
                    p.copy_(old)
    return done


def penalties(graph: Graph, model: nn.Module, rho: float, cost_weighted: bool) -> dict[str, float]:
    """rho per BN layer; with ``cost_weighted``, times the MACs per channel of the conv before it,
    divided by the mean over the BN layers that have one (the others get rho)."""
    bns = list(bn_layers(model))
    if not cost_weighted:
        return {n: rho for n in bns}
    producer = {bn: conv for conv, bn in graph.bn_after.items()}
    positions = {c.module: c.positions for c in graph.calls}
    cost = {}
    for n in bns:
        if (conv := producer.get(n)) in positions:
            m = model.get_submodule(conv)
            h = handler_for(m)
            c_in, _, groups = h.io(m)
            cost[n] = positions[conv] * c_in // groups * h.taps(m)
    mean = np.mean(list(cost.values())) if cost else 1.0
    return {n: rho * (cost[n] / mean if n in cost else 1.0) for n in bns}


def ista(model: nn.Module, train_loader, example_inputs, config: ISTA = ISTA(), *, eval_loader=None,
         ignore: Iterable = (), **how) -> Result:
    """Sparsify BN scales by ISTA on a copy of ``model``, remove the exact zeros (folding their
    constant outputs), then fine-tune. Records: "baseline", "sparse" (with ``zero_gammas``),
    "pruned" (with ``max_rel_diff``: pruned vs sparse-trained outputs on ``example_inputs``,
    which is 0 up to rounding away from zero-padded borders), "finetuned". ``how``: the run options
    every method takes (``Stages``); ``recalibrate`` does nothing here: only exact zeros are removed,
    so the pruned network computes what the trained one did and its BN statistics still fit.
    """
    teacher, model = model, copy.deepcopy(model)
    result = Result(model, [record("baseline", model, example_inputs, eval_loader)])
    device = next(model.parameters()).device
    x = example_inputs.to(device)
    graph = trace(model, x, ignore=ignore)
    scaled = rescale(model, graph, config.alpha, x)
    stages = Stages(**how)
    stages.fit(model, train_loader, "sparsity", epochs=config.sparsity_epochs, optim=config.optim,
               callbacks=[ProximalL1(penalties(graph, model, config.rho, config.cost_weighted))],
               eval_loader=eval_loader)
    x = x.to(next(model.parameters()).device)
    rescale(model, graph, 1.0 / config.alpha, x, groups=scaled, tol=float("inf"))
    zeros = sum(int((bn.weight == 0).sum()) for bn in bn_layers(model).values())
    result.records.append(record("sparse", model, x, eval_loader, zero_gammas=zeros,
                                 total_gammas=sum(bn.weight.numel() for bn in bn_layers(model).values())))
    graph = trace(model, x, ignore=ignore)  # constants of the zero channels as trained
    plan = plan_pruning(model, graph, BNScale(), Target(threshold=0.0, normalize=False,
                                                        min_channels=config.min_channels))
    pruned = apply(copy.deepcopy(model), graph, plan)
    with torch.no_grad():
        diff = _rel_err(pruned.eval()(x), model.eval()(x))
    result.records.append(record("pruned", pruned, x, eval_loader, max_rel_diff=diff))
    result.history = stages.fit(pruned, train_loader, "finetune", epochs=config.finetune_epochs,
                                optim=config.finetune_optim or config.optim, eval_loader=eval_loader,
                                teacher=teacher)
    result.records.append(record("finetuned", pruned, x, eval_loader))
    result.model = pruned
    return result


def _run(model, config: ISTA, data: Data, **how) -> Result:
    return ista(model, data.train_loader, data.example_inputs, config, eval_loader=data.eval_loader, **how)


register(Method("ista", ISTA, _run, needs=("train_loader",),
                finetune={"epochs": "finetune_epochs", "optim": "finetune_optim"}))

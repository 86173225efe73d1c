"""Network Slimming (Liu et al., ICCV 2017): L1 on every BN scale, one global threshold, fine-tune, repeat.

    result = slimming(model, train_loader, x, Slimming(sparsity=1e-4, amount=0.7), eval_loader=test_loader)
    small = result.model

Coupled channels (a residual stage, a DenseNet concat, a pre-activation BN that reads the residual
stream) form one group in the engine; a unit's score is the mean |gamma| over the group's BNs, and the
global threshold is taken over those unit scores. That is the engine's equivalent of the paper's
channel-selection layer: a stream channel goes only when the BNs that read it agree it is unimportant.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..criteria import BNScale
from ..graph import trace
from ..plan import Target
from ..prune import plan_pruning
from ..surgery import apply
from ..train import Callback, Optim
from ._common import Result, Stages, bn_layers, check_epochs, record
from ._registry import Data, Method, register


class SparsityL1(Callback):
    """Adds ``sparsity * sign(gamma)`` to every BN scale's gradient: the subgradient of an L1 penalty."""

    def __init__(self, sparsity: float):
        if not (isinstance(sparsity, (int, float)) and sparsity >= 0):
            raise ValueError(f"sparsity={sparsity!r} (lambda) must be >= 0")
        self.sparsity = float(sparsity)
        self._gammas: list[nn.Parameter] = []

    def on_fit_begin(self, model: nn.Module) -> None:
        self._gammas = [bn.weight for bn in bn_layers(model).values()]

    def after_backward(self, model: nn.Module) -> None:
        if self.sparsity:
            with torch.no_grad():
                for w in self._gammas:
                    if w.grad is not None:
                        w.grad.add_(torch.sign(w), alpha=self.sparsity)


@dataclass(frozen=True)
class Slimming:
    """sparsity: lambda (paper: 1e-4 for VGG, 1e-5 for ResNet/DenseNet). amount: fraction of the
    channels removed in each pass, below one network-wide threshold on |gamma|. passes > 1 repeats
    sparsity training, pruning and fine-tuning on the result (multi-pass). max_amount: the most of
    one layer's channels the global threshold may take (1 = the paper's: no cap)."""

    sparsity: float = 1e-4
    amount: float = 0.7
    sparsity_epochs: int = 10
    finetune_epochs: int = 10
    passes: int = 1
    min_channels: int = 1
    max_amount: float = 1.0
    optim: Optim = field(default_factory=Optim)
    finetune_optim: Optim | None = None

    def __post_init__(self):
        SparsityL1(self.sparsity)
        self.target()
        check_epochs(sparsity_epochs=self.sparsity_epochs, finetune_epochs=self.finetune_epochs)
        if not (isinstance(self.passes, int) and self.passes >= 1):
            raise ValueError(f"passes={self.passes!r} must be an integer >= 1")

    def target(self) -> Target:
        """The plan's target: one raw |gamma| threshold over the whole network."""
        return Target(amount=self.amount, global_ranking=True, normalize=False, min_channels=self.min_channels,
                      max_amount=self.max_amount)


def slimming(model: nn.Module, train_loader, example_inputs, config: Slimming = Slimming(), *,
             eval_loader=None, ignore: Iterable = (), **how) -> Result:
    """Run Network Slimming on a copy of ``model`` (the caller's model is not changed).

    Records per pass: "sparse" (after sparsity training, with the |gamma| of every BN), "pruned",
    "recalibrated" (BN statistics re-estimated) and "finetuned"; the first record is the "baseline".
    ``how``: the run options every method takes (``Stages``): checkpoint, a directory where each
    training stage checkpoints in its own sub-directory, and ``resume=True`` reruns the method from
    where it stopped (pruning is deterministic); compile (see ``secateur.train.fit``); recalibrate
    (batches, 0: off); distill (fine-tune with the unpruned model as teacher).
    """
    teacher, model = model, copy.deepcopy(model)
    ft = config.finetune_optim or config.optim
    stages = Stages(**how)
    result = Result(model, [record("baseline", model, example_inputs, eval_loader)])
    target = config.target()
    for p in range(config.passes):
        stages.fit(model, train_loader, f"pass{p}-sparsity", epochs=config.sparsity_epochs, optim=config.optim,
                   callbacks=[SparsityL1(config.sparsity)], eval_loader=eval_loader)
        gammas = torch.cat([bn.weight.detach().abs().flatten().cpu() for bn in bn_layers(model).values()])
        result.records.append(record("sparse", model, example_inputs, eval_loader, gammas=gammas.tolist(),
                                     **{"pass": p}))
        model = prune_by(model, example_inputs, target, ignore)
        model = stages.cut(result, model, example_inputs, train_loader, eval_loader, **{"pass": p})
        result.history = stages.fit(model, train_loader, f"pass{p}-finetune", epochs=config.finetune_epochs,
                                    optim=ft, eval_loader=eval_loader, teacher=teacher)
        result.records.append(record("finetuned", model, example_inputs, eval_loader, **{"pass": p}))
    result.model = model
    return result


def prune_by(model: nn.Module, example_inputs, target: Target, ignore: Iterable = ()) -> nn.Module:
    """A pruned copy of ``model`` by |gamma| (BNScale) for ``target``, traced on the model's device."""
    device = next(model.parameters()).device
    x = example_inputs.to(device)
    graph = trace(model, x, ignore=ignore)
    plan = plan_pruning(model, graph, BNScale(), target)
    return apply(copy.deepcopy(model), graph, plan)


def _run(model, config: Slimming, data: Data, **how) -> Result:
    return slimming(model, data.train_loader, data.example_inputs, config, eval_loader=data.eval_loader, **how)


register(Method("slimming", Slimming, _run, needs=("train_loader",),
                finetune={"epochs": "finetune_epochs", "optim": "finetune_optim"}))

"""Prune once by an importance criterion, then fine-tune: Li et al., "Pruning Filters for Efficient
ConvNets" (ICLR 2017) with ``criterion=L1()`` and ``inner_only=True`` (a ResNet's first conv of each
block only), and the same recipe with any other criterion, amount, MAC target or per-layer amounts.

    result = one_shot(model, x, OneShot(criterion=L1(), amount=0.5, finetune_epochs=3), train_loader=train)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from ..criteria import L1, Criterion
from ..graph import Role, trace
from ..plan import Target
from ..prune import prune
from ..runtimes import backends
from ..train import Optim
from ._common import Result, Stages, check_epochs, record
from ._registry import Data, Method, register
from .allocation import STRATEGIES, allocate
from .layerwise import ThiNet, chosen_groups


ALLOCATIONS = ("uniform", "global", *STRATEGIES)


@dataclass(frozen=True)
class OneShot:
    """criterion: what ranks the channels (a data criterion records ``calibration``); exactly one of
    ``amount`` (fraction of each group's channels), ``macs`` (fraction of MACs to keep), ``latency``
    (fraction of the latency to keep, measured on ``runtime`` with ``threads`` CPU threads at the
    example inputs' batch) and ``layer_amounts`` (per producing layer, e.g. from ``secateur
    sensitivity``); ``allocation``: how the budget is spread over the groups: "uniform" (one rate),
    "global" (one threshold on normalised scores), or chosen by recalibrated accuracy on training
    batches, "greedy" (AIMET's per-layer curves) or "search" (EagleEye's random search), those two
    for ``macs`` or ``latency`` (predicted by the runtime's latency table; see
    ``secateur.methods.allocate``); the planner options of :func:`secateur.prune`;
    ``inner_only``: prune only the convs inside blocks (Li et al.)."""

    criterion: Criterion = field(default_factory=L1)
    amount: float | None = None
    macs: float | None = None
    latency: float | None = None
    runtime: str = "torch"
    threads: int = 1
    layer_amounts: Mapping[str, float] | None = None
    allocation: str = "uniform"
    round_to: int = 1
    min_channels: int = 1
    max_amount: float | None = None
    inner_only: bool = False
    finetune_epochs: int = 0
    finetune_optim: Optim = field(default_factory=lambda: Optim(lr=0.01))

    def __post_init__(self):
        check_epochs(finetune_epochs=self.finetune_epochs)
        if self.layer_amounts is not None:
            if self.amount is not None or self.macs is not None or self.latency is not None \
                    or self.allocation != "uniform" or self.max_amount not in (None, 1.0):
                raise ValueError("layer_amounts= (per-layer amounts) replaces amount=, macs=, latency=, "
                                 "allocation= and max_amount=")
            return
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation={self.allocation!r}; choose one of {', '.join(ALLOCATIONS)}")
        if self.allocation in STRATEGIES and self.macs is None and self.latency is None:
            raise ValueError(f"allocation={self.allocation!r} chooses per-layer rates for a budget: give macs= or "
                             f"latency=")
        if self.runtime not in backends():
            raise ValueError(f"runtime={self.runtime!r}; choose one of {', '.join(backends())}")
        if self.latency is not None and (self.amount is not None or self.macs is not None):
            raise ValueError("give exactly one of amount=, macs= and latency=")
        if self.latency is not None and not (isinstance(self.latency, (int, float)) and 0 < self.latency <= 1):
            raise ValueError(f"latency={self.latency!r} must be in (0, 1]: the fraction of the latency to keep")
        Target(amount=self.amount, macs=self.latency if self.latency is not None else self.macs,
               global_ranking=self.allocation == "global", min_channels=self.min_channels, round_to=self.round_to,
               max_amount=1.0 if self.max_amount is None else self.max_amount)


def one_shot(model: nn.Module, example_inputs, config: OneShot, *, calibration=None, train_loader=None,
             eval_loader=None, **how) -> Result:
    """Prune a copy of ``model`` once by ``config.criterion``, recalibrate its BatchNorms on
    ``train_loader`` (else ``calibration``), then fine-tune it ``finetune_epochs``. ``how``: the run
    options every method takes (``Stages``: checkpoint, resume, progress, seed, compile, recalibrate,
    distill)."""
    if config.finetune_epochs and train_loader is None:
        raise ValueError("OneShot finetune_epochs > 0 needs train_loader=")
    stages = Stages(**how)
    ignore = _outer_layers(model, example_inputs) if config.inner_only else ()
    amount = dict(config.layer_amounts) if config.layer_amounts is not None else config.amount
    macs, latency, chosen = config.macs, config.latency, {}
    data = train_loader if train_loader is not None else calibration   # for allocation and recalibration
    if config.allocation in STRATEGIES:
        if data is None:
            raise ValueError(f"allocation={config.allocation!r} scores candidates on training batches: give "
                             f"train_loader=")
        found = allocate(model, example_inputs, config.criterion, macs=config.macs, latency=config.latency,
                         runtime=config.runtime, threads=config.threads, loader=data, strategy=config.allocation,
                         max_amount=min(config.max_amount or 1.0, 0.9), round_to=config.round_to,
                         min_channels=config.min_channels, ignore=ignore, data=calibration, seed=stages.seed,
                         progress=stages.progress)
        amount, macs, latency = found.layers, None, None
        chosen = dict(allocation=config.allocation, allocation_evaluations=found.evaluations,
                      allocation_seconds=found.seconds, allocation_score=found.score)
        if config.latency is not None:
            chosen["latency_predicted"] = found.kept
    small = prune(model, example_inputs, config.criterion, amount=amount, target_macs=macs,
                  target_latency=latency, runtime=config.runtime, threads=config.threads,
                  global_ranking=config.allocation == "global", round_to=config.round_to,
                  min_channels=config.min_channels, max_amount=1.0 if chosen else config.max_amount, ignore=ignore,
                  data=calibration, progress=stages.progress)
    result = Result(small, [record("baseline", model, example_inputs, eval_loader)])
    small = result.model = stages.cut(result, small, example_inputs, data, eval_loader, **chosen)
    if config.finetune_epochs:
        result.history = stages.fit(small, train_loader, "finetune", epochs=config.finetune_epochs,
                                    optim=config.finetune_optim, eval_loader=eval_loader, teacher=model)
        result.records.append(record("finetuned", small, example_inputs, eval_loader))
    return result


def _outer_layers(model: nn.Module, x) -> list[str]:
    """Every producer except the convs inside blocks (Li et al.: a ResNet's first conv per block)."""
    graph = trace(model, x)
    inner = set(chosen_groups(model, graph, ThiNet(amount=0.5)))
    return [n for g in graph.prunable for n in g.modules(Role.OUT) if n not in inner]


def _run(model, config: OneShot, data: Data, **how) -> Result:
    return one_shot(model, data.example_inputs, config, calibration=data.calibration,
                    train_loader=data.train_loader, eval_loader=data.eval_loader, **how)


register(Method("prune", OneShot, _run, finetune={"epochs": "finetune_epochs", "optim": "finetune_optim"},
                files={"ratios": ("layer_amounts", "ratios")}))

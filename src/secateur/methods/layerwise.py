"""ThiNet and He et al.'s channel pruning: layer by layer, each layer's successor rebuilt from samples.

    result = thinet(model, calib, x, ThiNet(amount=0.5), train_loader=train, eval_loader=test)
    result = channel_pruning(model, calib, x, ChannelPruning(macs=0.5), eval_loader=test)

Both walk the chosen layers in forward order. For each: trace the current model, take the channel
group the layer alone produces, choose what to keep from calibration samples of the layers that read
it (the consumers), rewrite the consumers' weights, cut through the engine's plan and surgery, and
optionally fine-tune a little before the next layer; a final fine-tune ends the run.

Which layers: by default every conv/Linear that alone produces a prunable group read only by dense
convs/Linears. That is the papers' rule for residual networks (a residual stage is produced by several
layers, so only the convs inside a block are cut and the block output keeps the shortcut's width:
ResNet-50's first two bottleneck convs, a basic block's first conv) and every conv of a VGG.
``max_layers=10`` is ThiNet's VGG-16 preset (the first 10 convs, 90% of the FLOPs).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..criteria import lasso as _lasso
from ..criteria import thinet as _thinet
from ..criteria import consumers, readable, sample
from ..graph import ChannelGroup, Graph, Role, trace
from ..plan import Plan, Target, estimate_cost, layer_facts, make_plan, site_masks
from ..runtimes import backend, latency_table, measured_ratio
from ..surgery import apply
from ..train import Optim
from ._common import Result, Stages, check_epochs, record
from ._registry import Data, Method, register


@dataclass(frozen=True)
class _Layerwise:
    amount: float | None = None     # fraction of each chosen layer's channels removed (ThiNet's 1 - r)
    macs: float | None = None       # or: fraction of MACs to keep, one rate over all chosen layers
    latency: float | None = None    # or: fraction of the latency on ``runtime`` to keep, one rate as well,
    runtime: str = "torch"          # predicted by per-layer latency tables (secateur.runtimes), measured
    threads: int = 1                # after the cut and recorded with the prediction
    layers: tuple[str, ...] | None = None   # producers to prune (module names); None: the rule above
    max_layers: int | None = None   # only the first n chosen layers (ThiNet VGG-16: 10)
    skip: tuple[str, ...] = ()      # layers the rule would choose but to leave whole (e.g. a ResNet's stem)
    samples: int | None = None      # the papers' m, spread over the calibration images; None: 10 per image
    layer_epochs: int = 0           # fine-tune after each layer (the paper: 1-2 on ImageNet)
    finetune_epochs: int = 0
    optim: Optim = field(default_factory=lambda: Optim(lr=0.01, weight_decay=1e-4))
    min_channels: int = 1
    round_to: int = 1
    seed: int = 0

    def __post_init__(self):
        if sum(v is not None for v in (self.amount, self.macs, self.latency)) != 1:
            raise ValueError("give exactly one of amount= (per layer), macs= and latency= (of the whole model)")
        Target(amount=self.amount, macs=self.macs if self.latency is None else self.latency,
               min_channels=self.min_channels, round_to=self.round_to)
        if not (isinstance(self.threads, int) and self.threads >= 1):
            raise ValueError(f"threads={self.threads!r} must be a positive int")
        check_epochs(layer_epochs=self.layer_epochs, finetune_epochs=self.finetune_epochs)
        if self.samples is not None and not (isinstance(self.samples, int) and self.samples >= 1):
            raise ValueError(f"samples={self.samples!r} must be a positive int or None")
        if self.max_layers is not None and not (isinstance(self.max_layers, int) and self.max_layers >= 1):
            raise ValueError(f"max_layers={self.max_layers!r} must be a positive int")


@dataclass(frozen=True)
class ThiNet(_Layerwise):
    """ThiNet (Luo et al., ICCV 2017): greedy removal by next-layer reconstruction, then least-squares
    scaling of the kept channels. gap=True is ThiNet-GAP: the VGG's fully connected head becomes
    global average pooling and one Linear (which then needs the fine-tune to learn)."""

    gap: bool = False


@dataclass(frozen=True)
class ChannelPruning(_Layerwise):
    """He et al. (ICCV 2017): LASSO selection, then least squares for the consumer's kept weights,
    reconstructing the *original* network's outputs from the *pruned* network's inputs."""


def thinet(model: nn.Module, data, example_inputs, config: ThiNet = ThiNet(amount=0.5), **kw) -> Result:
    """ThiNet on a copy of ``model``; ``data`` is a calibration loader (secateur.data.calibration)."""
    return _run(model, data, example_inputs, config, _thinet_step, **kw)


def channel_pruning(model: nn.Module, data, example_inputs, config: ChannelPruning = ChannelPruning(amount=0.5),
                    **kw) -> Result:
    """He et al.'s LASSO channel pruning on a copy of ``model``; ``data`` is a calibration loader."""
    return _run(model, data, example_inputs, config, _lasso_step, **kw)


def _run(model, data, x, config: _Layerwise, step, *, train_loader=None, eval_loader=None, **how) -> Result:
    if (config.layer_epochs or config.finetune_epochs) and train_loader is None:
        raise ValueError("fine-tuning epochs were asked for but no train_loader= was given")
    if config.latency is not None:
        backend(config.runtime)   # a missing runtime is one line, before any work
    teacher, model = model, copy.deepcopy(model)
    stages = Stages(**{**how, "seed": config.seed})
    progress = stages.progress
    if getattr(config, "gap", False):
        model = gap_head(model)
    original = copy.deepcopy(model).eval()
    x = x.to(next(model.parameters()).device)
    result = Result(model, [record("baseline", model, x, eval_loader)])
    keep, predicted = _keep_counts(model, x, config, progress)
    layers = tqdm(keep.items(), desc=type(config).__name__, total=len(keep), disable=not progress)
    for i, (name, count) in enumerate(layers):
        graph = trace(model, x)
        group = _produced_by(graph, name)
        kept = step(model, original, graph, group, count, data, config)
        model = apply(model, graph, Plan({group.index: tuple(kept.tolist())}))
        if config.layer_epochs:
            stages.fit(model, train_loader, f"layer{i}", epochs=config.layer_epochs, optim=config.optim,
                       eval_loader=eval_loader, teacher=teacher)
        result.records.append(record("layer", model, x, None, layer=name, kept=len(kept), of=group.size))
    timing = {}
    if config.latency is not None:
        timing = dict(latency_predicted=predicted, latency_measured=measured_ratio(original, model, x, config.runtime,
                                                                                   threads=config.threads))
    model = stages.cut(result, model, x, train_loader if train_loader is not None else data, eval_loader, **timing)
    if config.finetune_epochs:
        result.history = stages.fit(model, train_loader, "finetune", epochs=config.finetune_epochs,
                                    optim=config.optim, eval_loader=eval_loader, teacher=teacher)
        result.records.append(record("finetuned", model, x, eval_loader))
    result.model = model
    return result


def chosen_groups(model: nn.Module, graph: Graph, config: _Layerwise) -> dict[str, ChannelGroup]:
    """The layers to prune (producer name -> its group), in forward order."""
    out = {}
    for g in graph.prunable:
        producers = g.modules(Role.OUT)
        if len(producers) == 1 and producers[0] not in config.skip and (config.layers is None
                                                                        or producers[0] in config.layers):
            if not readable(model, g):
                if config.layers is not None:
                    consumers(model, g)     # a named layer that cannot be sampled: its one-line reason
                continue
            out[producers[0]] = g
    if config.layers is not None:
        missing = [n for n in config.layers if n not in out]
        if missing:
            raise ValueError(f"layers={missing[0]!r} does not alone produce a prunable channel group; "
                             f"choose from: {', '.join(out) or '(none)'}")
    names = list(out)[:config.max_layers]
    if not names:
        raise ValueError(f"{type(model).__name__} has no conv that alone produces a prunable group read by a "
                         f"dense conv/Linear; name the layers with layers=")
    return {n: out[n] for n in names}


def _keep_counts(model: nn.Module, x, config: _Layerwise, progress: bool = True) -> tuple[dict[str, int], float | None]:
    """Channels kept per chosen layer: the engine's planner with one rate over the chosen groups; for a
    latency target, the rate whose predicted latency meets it (bisection), and that prediction."""
    graph = trace(model, x)
    chosen = chosen_groups(model, graph, config)
    scores = {g.index: np.zeros(g.size) for g in chosen.values()}
    facts = layer_facts(graph)

    def plan_at(**target) -> Plan:
        return make_plan(graph, scores, Target(min_channels=config.min_channels, round_to=config.round_to, **target),
                         facts)
    predicted = None
    if config.latency is None:
        plan = plan_at(amount=config.amount, macs=config.macs)
    else:
        table = latency_table(model, graph, config.runtime, threads=config.threads, progress=progress)
        full = table.total()

        def ratio(p: Plan) -> float:
            return (estimate_cost(graph, facts, site_masks(graph, p.unit_masks(graph)), table.layer) + table.fixed) / full
        lo, hi = 0.0, 0.99
        plan = plan_at(amount=hi)
        least = ratio(plan)
        if least > config.latency:
            raise ValueError(f"latency={config.latency} is out of reach by cutting only the chosen layers: at 99 % "
                             f"of their channels the predicted latency is {least:.3f} of the original")
        for _ in range(20):   # the predicted latency falls as the rate grows
            mid = (lo + hi) / 2
            candidate = plan_at(amount=mid)
            if ratio(candidate) <= config.latency:
                hi, plan = mid, candidate
            else:
                lo = mid
        predicted = ratio(plan)
    return {n: len(plan.keep.get(g.index, range(g.size))) for n, g in chosen.items()}, predicted


def _produced_by(graph: Graph, name: str) -> ChannelGroup:
    return next(g for g in graph.prunable if g.modules(Role.OUT) == [name])


def _thinet_step(model, original, graph, group, keep: int, data, config) -> np.ndarray:
    items = _thinet.thinet_grams(model, graph, [group], data, samples=config.samples,
                                 seed=config.seed)[group.index]
    order = _thinet.greedy_order(_thinet.group_gram(items))
    kept = np.sort(order[group.size - keep:])
    for c, sink in items:
        w = _thinet.scales(sink.gram, kept)
        mask = np.isin(c.unit, kept)
        factor = w[torch.as_tensor(np.searchsorted(kept, c.unit[mask]))]
        layer = model.get_submodule(c.name)
        with torch.no_grad():
            pos = torch.as_tensor(c.positions[mask], dtype=torch.long)
            shape = (1, -1) + (1,) * (layer.weight.dim() - 2)
            layer.weight[:, pos] *= factor.view(shape).to(layer.weight)
    return kept


def _lasso_step(model, original, graph, group, keep: int, data, config) -> np.ndarray:
    cons = consumers(model, group)
    targets = {c.name: [] for c in cons}
    sample(original, data, [(c, lambda win, out, d, t=targets[c.name]: t.append(out)) for c in cons],
           samples=config.samples, seed=config.seed, input_shape=graph.input_shapes[0])
    items = [(c, _lasso.LassoSink(model.get_submodule(c.name), c, group.size, targets[c.name])) for c in cons]
    sample(model, data, items, samples=config.samples, seed=config.seed, input_shape=graph.input_shapes[0])
    a, b = _lasso.group_terms(items)
    kept = _lasso.select(a, b, items[0][1].n, keep)
    for c, sink in items:
        sink.reconstruct_(model.get_submodule(c.name), c, kept)
    return kept


def gap_head(model: nn.Module) -> nn.Module:
    """ThiNet-GAP: a VGG's ``avgpool`` + fully connected ``classifier`` become global average pooling
    and one new Linear from the last conv's channels to the classes (in place; returned)."""
    head = getattr(model, "classifier", None)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
    convs = [m for m in getattr(model, "features", nn.Sequential()).modules() if isinstance(m, nn.Conv2d)]
    if not linears or not convs or not hasattr(model, "avgpool"):
        raise ValueError(f"gap=True needs a VGG-style model (features, avgpool, a Linear classifier); "
                         f"{type(model).__name__} is not one")
    p = linears[-1].weight
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(convs[-1].out_channels, linears[-1].out_features).to(p.device, p.dtype)
    return model


def _registered(step):
    def run(model, config: _Layerwise, data: Data, *, seed: int = 0, **how) -> Result:
        return _run(model, data.calibration, data.example_inputs, config, step, train_loader=data.train_loader,
                    eval_loader=data.eval_loader, **how)
    return run


for _name, _config, _step in (("thinet", ThiNet, _thinet_step), ("channel-pruning", ChannelPruning, _lasso_step)):
    register(Method(_name, _config, _registered(_step), needs=("calibration",),
                    finetune={"epochs": "finetune_epochs", "optim": "optim"}))

"""Torch-Pruning 1.6.1 (the anchor) and secateur's L1 prune to a MAC target, shared by the engine
benchmark's sections. Inputs are a tensor or a tuple of model inputs (a detector's list of images).

Torch-Pruning gets ``MagnitudeImportance(p=1)`` (L1, its default group reduction) and, in
``ignored_layers``, the layers whose outputs are the model's outputs (the classifier; for detectors
and YOLO the prediction convs, which its docs ask users to list by hand: we give it the list
secateur's graph finds). It has no MAC target, so ``tp_search`` searches its ``pruning_ratio``.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

import secateur
from secateur.graph import Role
from secateur.measure import count_macs

TARGET = 0.5          # fraction of MACs to keep
TP_STEPS = 200        # Torch-Pruning's iterative steps: each removes 0.5% of every group's channels


def inputs_of(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


_OUTPUTS: dict[tuple[int, str], list[str]] = {}


def output_layers(model: nn.Module, x) -> list[nn.Module]:
    """The conv/linear layers whose outputs are the model's outputs (what must stay whole), found
    once per model architecture and looked up by name in copies."""
    key = (sum(p.numel() for p in model.parameters()), type(model).__name__)
    if key not in _OUTPUTS:
        graph = secateur.trace(model, x)
        _OUTPUTS[key] = sorted({m for g in graph.groups if g.frozen and "model output" in g.frozen
                                for m in g.modules(Role.OUT)})
    return [model.get_submodule(n) for n in _OUTPUTS[key]]


@torch.no_grad()
def macs_of(model: nn.Module, x) -> int:
    """MACs as ``secateur.measure`` counts them (its counter, without the timing and file size)."""
    return count_macs(model.eval(), inputs_of(x))


# -- the two tools ---------------------------------------------------------------------------------

def secateur_l1(round_to: int = 1):
    def run(model: nn.Module, x) -> nn.Module:
        return secateur.prune(model, x, secateur.criteria.L1(), target_macs=TARGET, round_to=round_to)
    return run


def tp_pruner(model: nn.Module, x, ratio: float, steps: int) -> tp.pruner.MetaPruner:
    return tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                pruning_ratio=ratio, iterative_steps=steps,
                                ignored_layers=output_layers(model, x))


def tp_progressive(model: nn.Module, x, steps: int = TP_STEPS) -> nn.Module:
    """Torch-Pruning to the MAC target: one small step at a time, counting MACs after each."""
    model = copy.deepcopy(model).eval()
    budget = TARGET * macs_of(model, x)
    pruner = tp_pruner(model, x, 1.0, steps)  # builds its graph with autograd: not under no_grad
    for step in range(1, steps + 1):
        pruner.step()
        if macs_of(model, x) <= budget:
            break
    model.tp_ratio = step / steps
    return model


def tp_one_shot(model: nn.Module, x, ratio: float) -> nn.Module:
    """Torch-Pruning in one step at channel ratio ``ratio``, on a copy of ``model``."""
    model = copy.deepcopy(model).eval()
    tp_pruner(model, x, ratio, 1).step()
    return model


def tp_search(model: nn.Module, x, band: float = 0.005, tol: float = 0.005,
              probes: int = 12) -> nn.Module:
    """Torch-Pruning to the MAC target by searching its ``pruning_ratio``: one-shot prunes of fresh
    copies, the ratio bracketed and interpolated, until the MACs kept are in [TARGET - band, TARGET]
    or the bracket is narrower than ``tol``. MACs fall roughly as (1 - ratio)^2, so the guesses
    interpolate sqrt(MACs) linearly; it usually takes 2 to 4 prunes. Returns the best prune that
    meets the target (largest MACs), with ``tp_ratio`` and ``tp_probes`` set on it."""
    base = macs_of(model, x)
    lo, lo_root = 0.0, 1.0             # ratio and sqrt(MAC ratio) known to be over the target
    hi, hi_root, best = None, None, None
    goal = TARGET ** 0.5
    for probe in range(1, probes + 1):
        if hi is None:
            guess = 1 - (1 - lo) * goal / lo_root
        else:
            guess = lo + (hi - lo) * (lo_root - goal) / (lo_root - hi_root)
        span = (hi if hi is not None else 1.0) - lo
        ratio = min(max(guess, lo + 0.1 * span), lo + 0.9 * span) if probe > 1 else guess
        pruned = tp_one_shot(model, x, ratio)
        kept = macs_of(pruned, x) / base
        if kept <= TARGET:
            hi, hi_root, best = ratio, kept ** 0.5, pruned
            if kept >= TARGET - band:
                break
        else:
            lo, lo_root = ratio, kept ** 0.5
        if hi is not None and hi - lo < tol:
            break
    if best is None:
        raise RuntimeError(f"target not reached: pruning_ratio {lo:.3f} keeps {lo_root ** 2:.3f} of the MACs")
    best.tp_ratio, best.tp_probes = hi, probe
    return best


def tp_silence_and_cut(model: nn.Module, x, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Torch-Pruning's side of the exactness probe: a third of every group its dependency graph finds
    is silenced (the input columns of every ungrouped conv/linear that reads them zeroed, as
    ``secateur.silence`` does) and exactly those channels are cut by its own groups, pruned one by one
    as its ``MetaPruner.step`` does. Returns (silenced copy, cut copy)."""
    rng = np.random.default_rng(seed)
    cut = copy.deepcopy(model).eval()
    names = {m: n for n, m in cut.named_modules()}
    graph = tp.DependencyGraph().build_dependency(cut, example_inputs=x)
    zeroed: list[tuple[str, list[int]]] = []
    for group in graph.get_all_groups(ignored_layers=output_layers(cut, x)):
        dep, idxs = group[0]
        pick = sorted(rng.choice(len(idxs), size=max(1, len(idxs) // 3), replace=False).tolist())
        sub = graph.get_pruning_group(dep.target.module, dep.handler, pick)
        for d, ix in sub:
            m = d.target.module
            if graph.is_in_channel_pruning_fn(d.handler) and isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) \
                    and getattr(m, "groups", 1) == 1 and m in names:
                zeroed.append((names[m], [int(getattr(i, "idx", i)) for i in ix]))
        sub.prune()
    silenced = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, ix in zeroed:
            layer = silenced.get_submodule(name)
            if getattr(layer, "transposed", False):
                layer.weight[ix] = 0
            else:
                layer.weight[:, ix] = 0
    return silenced, cut


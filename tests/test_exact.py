"""Surgery is proven by equivalence, on every model of the zoo.

Silence some units of every prunable group (zero every weight that reads them: they contribute
nothing), remove exactly those units, and the outputs must not move. Outputs are O(1) thanks to
``calibrate``, and compared relative to their scale. Groups through a normalisation over channels
(ConvNeXt's LayerNorm) are flagged inexact: for them we check the model runs and shrinks.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from zoo import ZOO, ZooEntry, calibrate, zoo_params

import secateur
from secateur.criteria import L1


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    assert scale > 1e-3, f"outputs too small ({scale:.1e}) for a meaningful comparison"
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _silence_and_cut(model, graph, groups, pick) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(silenced copy, silenced copy pruned of exactly the silenced units)."""
    silenced = copy.deepcopy(model)
    keep = {}
    for g in groups:
        units = pick(g)
        secateur.silence(silenced, g, units)
        keep[g.index] = np.setdiff1d(np.arange(g.size), units)
    pruned = secateur.apply(copy.deepcopy(silenced), graph, secateur.Plan(keep))
    return silenced, pruned


@pytest.mark.parametrize("entry", zoo_params())
def test_every_group_is_cut_exactly(entry: ZooEntry) -> None:
    x = entry.example_input()
    model = calibrate(entry.build(), x)
    graph = secateur.trace(model, x)
    exact = [g for g in graph.prunable if g.exact]
    assert exact, f"{entry.name}: no exact prunable group"
    rng = np.random.default_rng(0)
    silenced, pruned = _silence_and_cut(
        model, graph, exact, lambda g: np.sort(rng.choice(g.size, size=max(1, g.size // 3), replace=False)))
    assert _params(pruned) < _params(model)
    _close(_run(pruned, x), _run(silenced, x))


@pytest.mark.parametrize("entry", zoo_params(e for e in ZOO if not e.slow))
def test_prune_to_half_macs_gives_a_valid_smaller_model(entry: ZooEntry, tmp_path) -> None:
    x = entry.example_input()
    model = calibrate(entry.build(), x)
    before = copy.deepcopy(model.state_dict())
    small = secateur.prune(model, x, L1(), target_macs=0.5)
    y = _run(small, x)
    assert y.shape == _run(model, x).shape
    secateur.save(small, tmp_path / "small")    # and it survives safetensors + pruning.json
    again = secateur.load(tmp_path / "small", model=entry.build()).eval()
    torch.testing.assert_close(_run(again, x), y, rtol=0, atol=0)
    base, cut = secateur.measure(model, x, latency=False), secateur.measure(small, x, latency=False)
    assert cut.macs <= 0.5 * base.macs * 1.02, f"{cut.macs / base.macs:.3f} of the MACs left"
    assert cut.macs >= 0.3 * base.macs   # the budget is met, not overshot wildly
    for k, v in model.state_dict().items():   # the caller's model is untouched
        assert torch.equal(v, before[k]), k


def test_a_wrong_surgery_is_caught() -> None:
    """The equivalence test has teeth: silencing one set of units but cutting another must fail."""
    entry = next(e for e in ZOO if e.name == "resnet18")
    x = entry.example_input()
    model = calibrate(entry.build(), x)
    graph = secateur.trace(model, x)
    g = graph.prunable[1]
    silenced = copy.deepcopy(model)
    secateur.silence(silenced, g, np.arange(0, 8))
    wrong = secateur.apply(copy.deepcopy(silenced), graph, secateur.Plan({g.index: np.arange(1, g.size - 7)}))
    with pytest.raises(AssertionError):
        _close(_run(wrong, x), _run(silenced, x))


def test_inexact_groups_still_give_a_working_model() -> None:
    entry = next(e for e in ZOO if e.name == "convnext_tiny")
    x = entry.example_input()
    model = calibrate(entry.build(), x)
    graph = secateur.trace(model, x)
    inexact = [g for g in graph.prunable if not g.exact]
    assert inexact and all("LayerNorm" in type(model.get_submodule(m.site.module)).__name__
                           or m.site.role is not secateur.graph.Role.NORM
                           for g in inexact for m in g.members)
    _, pruned = _silence_and_cut(model, graph, inexact, lambda g: np.arange(0, g.size, 4))
    y = _run(pruned, x)
    assert y.shape == _run(model, x).shape and torch.isfinite(y).all()
    assert _params(pruned) < _params(model)

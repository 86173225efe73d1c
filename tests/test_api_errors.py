"""Bad input gets a clear one-line error naming the culprit, and the caller's model is never changed.

Every ``prune`` call here, successful or not, runs under :func:`_untouched`: the caller's
state_dict (BatchNorm running stats included) and every module's training flag must be exactly
what they were. The shared models are in train mode (one submodule in eval mode) so that a stray
``model.eval()`` or a forward pass in train mode would show.
"""
from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import secateur
from secateur.criteria import L1

_X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    model.layer2.eval()   # mixed flags: restoring them all to one mode would show
    return model


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Assert that the block leaves ``model``'s state_dict and training flags exactly as they were."""
    state = copy.deepcopy(model.state_dict())
    flags = {name: m.training for name, m in model.named_modules()}
    try:
        yield
    finally:
        after = model.state_dict()
        assert list(after) == list(state), "the caller's model gained or lost tensors"
        for k, v in state.items():
            assert after[k].shape == v.shape and torch.equal(after[k], v), f"the caller's {k} changed"
        assert {name: m.training for name, m in model.named_modules()} == flags, \
            "the caller's training flags changed"


def _message(exc: pytest.ExceptionInfo, *culprits: str) -> str:
    """The exception's message, checked to be one non-empty line naming every one of ``culprits``."""
    text = str(exc.value)
    assert text.strip(), f"{exc.typename} with an empty message"
    assert "\n" not in text.strip(), f"{exc.typename} message is not one line:\n{text}"
    for c in culprits:
        assert c in text, f"{c!r} not named in: {text}"
    return text


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ---------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kwargs, culprits", [
    (dict(amount=1.0), ["amount=1.0", "[0, 1)"]),
    (dict(amount=-0.1), ["amount=-0.1"]),
    (dict(amount=1.5), ["amount=1.5"]),
    (dict(amount=float("nan")), ["amount=nan"]),
    (dict(amount={"layer1.0.conv1": 1.5}), ["amount['layer1.0.conv1']=1.5", "[0, 1)"]),
    (dict(amount={"layer1.0.conv1": 0.5, "layer1.1.conv1": 7.0}), ["amount['layer1.1.conv1']=7.0"]),
    (dict(target_macs=0), ["target_macs=0", "(0, 1]"]),
    (dict(target_macs=1.5), ["target_macs=1.5"]),
    (dict(target_macs=-0.5), ["target_macs=-0.5"]),
    (dict(amount=0.5, target_macs=0.5), ["amount=", "target_macs="]),
    (dict(), ["amount=", "target_macs="]),
    (dict(amount=0.5, min_channels=0), ["min_channels=0"]),
    (dict(amount=0.5, min_channels=2.5), ["min_channels=2.5"]),
    (dict(amount=0.5, round_to=0), ["round_to=0"]),
    (dict(amount=0.5, max_amount=0), ["max_amount=0", "(0, 1]"]),
    (dict(amount=0.5, max_amount=1.5), ["max_amount=1.5"]),
    (dict(target_macs=0.5, round_to=-8), ["round_to=-8"]),
], ids=lambda v: ",".join(f"{k}={v[k]}" for k in v) or "neither" if isinstance(v, dict) else None)
def test_bad_arguments_are_one_line_value_errors(resnet, kwargs, culprits) -> None:
    with _untouched(resnet), pytest.raises(ValueError) as exc:
        secateur.prune(resnet, _X, L1(), **kwargs)
    assert not isinstance(exc.value, secateur.TargetError)   # a bad argument, not an unreachable target
    _message(exc, *culprits)


def test_unreachable_target_says_the_best_reachable_ratio(resnet) -> None:
    with _untouched(resnet), pytest.raises(secateur.TargetError) as exc:
        secateur.prune(resnet, _X, L1(), target_macs=0.001, min_channels=10**6)
    text = _message(exc, "target_macs=0.001", "min_channels=1000000")
    best = float(re.search(r"keeps (\d+\.\d+)", text).group(1))
    assert best == pytest.approx(1.0)   # no group may lose a channel: nothing can be cut


def test_the_reported_best_ratio_is_reachable(resnet) -> None:
    with _untouched(resnet), pytest.raises(secateur.TargetError) as exc:
        secateur.prune(resnet, _X, L1(), target_macs=0.01, min_channels=32)
    best = float(re.search(r"keeps (\d+\.\d+)", _message(exc, "target_macs=0.01", "min_channels=32")).group(1))
    assert 0.01 < best < 1
    with _untouched(resnet):   # ... and asking for exactly that (up to the printed rounding) works
        small = secateur.prune(resnet, _X, L1(), target_macs=min(1.0, best + 0.001), min_channels=32)
    base = secateur.measure(resnet, _X, latency=False).macs
    assert secateur.measure(small, _X, latency=False).macs <= (best + 0.002) * base
    assert all(m.out_channels >= 32 for m in small.modules() if isinstance(m, nn.Conv2d))


def test_the_reported_best_ratio_differs_from_the_refused_target(resnet) -> None:
    with _untouched(resnet), pytest.raises(secateur.TargetError) as exc:
        secateur.prune(resnet, _X, L1(), target_macs=0.001)
    best = float(re.search(r"keeps (\d+\.\d+)", _message(exc, "target_macs=0.001")).group(1))
    assert best > 0.001


@pytest.mark.parametrize("how", ["prune", "trace"])
def test_wrong_input_shape_is_a_trace_error_naming_the_layer(resnet, how) -> None:
    x = torch.randn(2, 1, 64, 64)   # one channel into a 3-channel model
    with _untouched(resnet), pytest.raises(secateur.TraceError) as exc:
        if how == "prune":
            secateur.prune(resnet, x, L1(), amount=0.5)
        else:
            secateur.trace(resnet, x)
    first = str(exc.value).splitlines()[0]
    assert "conv1" in first and "(2, 1, 64, 64)" in first and "ResNet" in first, first


def test_wrong_input_shape_error_is_one_line(resnet) -> None:
    with _untouched(resnet), pytest.raises(secateur.TraceError) as exc:
        secateur.prune(resnet, torch.randn(2, 1, 64, 64), L1(), amount=0.5)
    _message(exc, "conv1", "(2, 1, 64, 64)")


@pytest.mark.parametrize("layer, x, want", [
    (nn.Conv2d(3, 8, 3), (2, 1, 9, 9), "expects (2, 3, 9, 9)"),
    (nn.Linear(16, 4), (2, 12), "expects (2, 16)"),
    (nn.BatchNorm2d(8), (2, 6, 5, 5), "expects (2, 8, 5, 5)"),
    (nn.GroupNorm(2, 8), (2, 6, 5, 5), "expects (2, 8, 5, 5)"),
    (nn.LayerNorm(16), (2, 5, 12), "expects (2, 5, 16)"),
], ids=["conv", "linear", "batchnorm", "groupnorm", "layernorm"])
def test_a_shape_error_says_what_the_layer_expects(layer, x, want) -> None:
    model = nn.Sequential(nn.Identity(), layer).eval()
    with pytest.raises(ValueError) as exc:
        secateur.measure(model, torch.randn(*x), latency=False)
    line = str(exc.value)
    assert len(line.splitlines()) == 1 and "'1'" in line and f"which got {x}" in line and want in line, line


@pytest.mark.parametrize("make, x", [
    (lambda: nn.Linear(8, 4), torch.randn(2, 8)),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(2, 3, 8, 8)),   # its output is the model output
    (lambda: nn.Sequential(nn.Conv2d(3, 1, 3), nn.ReLU(), nn.Conv2d(1, 4, 1)), torch.randn(2, 3, 8, 8)),
], ids=["linear", "conv-is-output", "one-channel"])
@pytest.mark.parametrize("target", [dict(amount=0.5), dict(target_macs=0.5)], ids=["amount", "macs"])
def test_a_model_with_nothing_to_prune_is_a_value_error(make, x, target) -> None:
    model = make().train()
    assert not secateur.trace(model, x).prunable
    with _untouched(model), pytest.raises(ValueError) as exc:
        secateur.prune(model, x, L1(), **target)
    _message(exc, type(model).__name__, "no prunable layer")


# ---------------------------------------------------------------------------------------------- untraceable
class Gate(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.gate = Gate()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(self.body(self.stem(x)).mean((2, 3))))


def test_untraceable_module_is_made_opaque_and_named() -> None:
    torch.manual_seed(0)
    model, x = Gated().train(), torch.randn(2, 3, 8, 8)
    with _untouched(model):
        graph = secateur.trace(model, x)
    assert list(graph.opaque) == ["gate"] and "tensor values" in graph.opaque["gate"]
    assert "opaque: gate" in str(graph)
    stem = next(g for g in graph.groups if "stem.0" in g.modules(secateur.graph.Role.OUT))
    body = next(g for g in graph.groups if "body.0" in g.modules(secateur.graph.Role.OUT))
    assert stem.prunable and body.frozen and "gate" in body.frozen


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


def test_untraceable_root_names_the_model_and_the_line() -> None:
    model, x = Branchy(), torch.randn(2, 3, 8, 8)
    with pytest.raises(secateur.TraceError) as exc:
        secateur.trace(model, x)
    _message(exc, "Branchy", "tensor values", "line")


@pytest.mark.parametrize("ignore", [["gate"], "module"], ids=["by-name", "by-object"])
def test_untraceable_module_can_be_ignored(ignore) -> None:
    torch.manual_seed(0)
    model, x = Gated().train(), torch.randn(2, 3, 8, 8)
    ignore = [model.gate] if ignore == "module" else ignore
    graph = secateur.trace(model, x, ignore=ignore)
    stem = next(g for g in graph.groups if "stem.0" in g.modules(secateur.graph.Role.OUT))
    assert stem.prunable and stem.size == 8
    body = next(g for g in graph.groups if "body.0" in g.modules(secateur.graph.Role.OUT))
    assert body.frozen   # its channels flow into the opaque gate: kept whole
    with _untouched(model):
        small = secateur.prune(model, x, L1(), amount=0.5, ignore=ignore)
    assert small.stem[0].out_channels == 4 and small.body[0].in_channels == 4
    assert small.body[0].out_channels == 16
    assert _run(small, x).shape == (2, 4)


def test_ignore_of_a_module_not_in_the_model_is_a_value_error(resnet) -> None:
    stranger = nn.Conv2d(3, 3, 1)
    for ignore, culprit in (([stranger], "Conv2d"), (["layer9.conv"], "layer9.conv")):
        for call in (lambda: secateur.trace(resnet, _X, ignore=ignore),
                     lambda: secateur.prune(resnet, _X, L1(), amount=0.5, ignore=ignore)):
            with _untouched(resnet), pytest.raises(ValueError) as exc:
                call()
            _message(exc, "ignore=", culprit)


def test_ignore_given_as_a_bare_string_names_the_string(resnet) -> None:
    try:
        graph = secateur.trace(resnet, _X, ignore="layer1")
    except ValueError as exc:
        assert "layer1" in str(exc), str(exc)
    else:   # or it is accepted as one name
        assert list(map(str, graph.groups)) == list(map(str, secateur.trace(resnet, _X, ignore=["layer1"]).groups))


# ---------------------------------------------------------------------------------------------- plans
def test_a_plan_that_removes_a_whole_group_is_a_value_error(resnet) -> None:
    graph = secateur.trace(resnet, _X)
    g = graph.prunable[0]
    victim = copy.deepcopy(resnet)
    with _untouched(victim), pytest.raises(ValueError) as exc:
        secateur.apply(victim, graph, secateur.Plan({g.index: []}))
    _message(exc, f"group {g.index}", g.modules()[0], "keep at least one")


def test_a_plan_naming_a_frozen_or_missing_group_is_a_value_error(resnet) -> None:
    graph = secateur.trace(resnet, _X)
    frozen = next(g for g in graph.groups if g.frozen)
    victim = copy.deepcopy(resnet)
    with _untouched(victim), pytest.raises(ValueError) as exc:
        secateur.apply(victim, graph, secateur.Plan({frozen.index: [0]}))
    _message(exc, f"group {frozen.index}", "frozen", frozen.frozen)
    with _untouched(victim), pytest.raises(ValueError) as exc:
        secateur.apply(victim, graph, secateur.Plan({len(graph.groups) + 3: [0]}))
    _message(exc, f"group {len(graph.groups) + 3}")


@pytest.mark.parametrize("bad", ["too-large", "negative"])
def test_a_plan_with_units_out_of_range_is_a_value_error(resnet, bad) -> None:
    graph = secateur.trace(resnet, _X)
    g = graph.prunable[0]
    units = [0, g.size + 5] if bad == "too-large" else [0, -1]
    victim = copy.deepcopy(resnet)
    with _untouched(victim), pytest.raises(ValueError) as exc:
        secateur.apply(victim, graph, secateur.Plan({g.index: units}))
    _message(exc, f"group {g.index}", str(units[-1]))


# ---------------------------------------------------------------------------------------------- the caller's model
@pytest.mark.parametrize("kwargs", [dict(amount=0.3), dict(target_macs=0.5), dict(amount=0.5, global_ranking=True),
                                    dict(target_macs=0.6, round_to=8, min_channels=16)],
                         ids=["amount", "macs", "global", "macs-rounded"])
def test_successful_prune_leaves_the_callers_model_alone(resnet, kwargs) -> None:
    with _untouched(resnet):
        small = secateur.prune(resnet, _X, L1(), **kwargs)
    assert small is not resnet
    assert all(a is not b for a, b in zip(small.parameters(), resnet.parameters()))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in resnet.parameters())
    # the copy keeps the caller's modes
    assert {n: m.training for n, m in small.named_modules()} == {n: m.training for n, m in resnet.named_modules()}
    assert _run(small, _X).shape == (2, 10)


def test_trace_leaves_a_train_mode_model_alone(resnet) -> None:
    with _untouched(resnet):   # BatchNorm running stats would move if it ran in train mode
        graph = secateur.trace(resnet, _X)
    assert graph.prunable


# ---------------------------------------------------------------------------------------------- save / load
def test_save_into_an_existing_directory_needs_overwrite(tmp_path: Path) -> None:
    small = secateur.prune(torchvision.models.resnet18(num_classes=10), _X, L1(), amount=0.5)
    target = tmp_path / "pruned"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError) as exc:
        secateur.save(small, target)
    _message(exc, str(target), "overwrite=True")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]   # no temporary left behind
    secateur.save(small, target, overwrite=True)
    assert not (target / "notes.txt").exists() and (target / "pruning.json").is_file()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_a_pruned_torchvision_model_round_trips(tmp_path: Path, name: str) -> None:
    from zoo import calibrate
    torch.manual_seed(0)
    build = getattr(torchvision.models, name)
    model = calibrate(build(num_classes=10), _X)
    small = secateur.prune(model, _X, L1(), target_macs=0.5)
    macs = [secateur.measure(m, _X, latency=False).macs for m in (small, model)]
    assert macs[0] <= 0.51 * macs[1]
    secateur.save(small, tmp_path / name)
    torch.manual_seed(1)
    fresh = build(num_classes=10)
    assert sum(p.numel() for p in fresh.parameters()) > sum(p.numel() for p in small.parameters())
    again = secateur.load(tmp_path / name, model=fresh)
    assert again is fresh
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in small.parameters())
    y = _run(small, _X)
    assert y.abs().max() > 1e-3
    torch.testing.assert_close(_run(again, _X), y, rtol=1e-5, atol=1e-6 * y.abs().max().item())
    np.testing.assert_array_equal([m.out_channels for m in again.modules() if isinstance(m, nn.Conv2d)],
                                  [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)])


@pytest.mark.parametrize("how", ["evaluate", "record", "apoz", "taylor", "rescale"])
def test_in_place_helpers_give_every_module_its_own_mode_back(resnet, how) -> None:
    from secateur.criteria import APoZ, Taylor
    from secateur.methods import record
    from secateur.methods.ista import rescale
    from secateur.train import evaluate
    x = torch.randn(2, 3, 32, 32)
    data = [(x, torch.tensor([1, 2]))]
    flags = {name: m.training for name, m in resnet.named_modules()}
    if how == "evaluate":
        evaluate(resnet, data)
    elif how == "record":
        record("now", resnet, x, data)
    elif how == "rescale":
        rescale(resnet, secateur.trace(resnet, x), 2.0, x)
    else:   # recording runs on the model it is bound to (prune binds a copy; a user may bind their own)
        {"apoz": APoZ, "taylor": Taylor}[how]().bind(resnet, secateur.trace(resnet, x), data)
    assert {name: m.training for name, m in resnet.named_modules()} == flags

"""Python that real forwards run: shape reads, guards, *args, unpacked chunks, list appends; and the
patterns that used to give back a broken model (per-channel parameters reshaped in forward, sizes
read off another tensor's channels, tied weights, non-finite scores).

Each model is silenced and cut group by group (as in test_exact) and must compute what it did."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import secateur
from secateur.criteria import L1
from secateur.graph import Role
from trace_helpers import calibrated, cbr, exact, group_of


class Guarded(nn.Module):
    """Reads shapes, asserts on the batch, branches on rank: all resolve to the example's values."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(16, 16)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        assert x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
        if x.shape[-1] != 8:
            raise ValueError("8x8 inputs only")
        y = self.b(self.a(x))
        b, c, h, w = y.shape
        y = y.reshape(b, c, h * w).reshape(b, c, h, w)   # sizes read off y itself: they follow it
        y = nn.functional.max_pool2d(y, 2)
        return self.fc(y.view(y.size(0), -1))            # the papers' flatten


class C2fLike(nn.Module):
    """Ultralytics' C2f: list(chunk), a list extended in a loop, then cat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.cv1 = cbr(16, 16)
        self.m = nn.ModuleList(cbr(8, 8) for _ in range(2))
        self.cv2 = cbr(32, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(self.stem(x)).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.head(self.cv2(torch.cat(y, 1)))


class SplitScales(nn.Module):
    """EdgeNeXt's SDTA block: chunk(3) of a width 3 does not divide (11: 4, 4, 3), a depthwise conv
    on each piece but the last, each fed the previous one's output, then cat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 11)
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1, groups=4) for _ in range(2))
        self.head = nn.Conv2d(11, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = self.stem(x).chunk(3, 1)
        out, sp = [], pieces[0]
        for i, conv in enumerate(self.convs):
            sp = conv(sp if i == 0 else sp + pieces[i])
            out.append(sp)
        return self.head(torch.cat(out + [pieces[-1]], 1))


class LayerScaled(nn.Module):
    """A per-channel parameter reshaped in forward (timm's LayerScale, every ConvNeXt)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = cbr(3, 16), nn.Conv2d(16, 16, 3, padding=1)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, 16))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.how == "view":
            z = self.b(y) * self.gamma.view(1, -1, 1, 1)
        elif self.how == "reshape":
            z = self.b(y).mul(self.gamma.reshape(1, -1, 1, 1))
        else:
            z = self.b(y) * self.gamma[None, :, None, None]
        return self.head(y + z)


class CrossReshape(nn.Module):
    """EdgeNeXt's cross-covariance attention: qkv reshaped with C read off its *input*."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)
        self.qkv = nn.Conv2d(8, 24, 1)
        self.proj = nn.Conv2d(24, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, c, h, w)
        return self.proj(qkv.reshape(b, 3 * c, h, w))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.b.weight = self.a.weight
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x).relu(), self.b(x).relu()], 1))


class Caching(nn.Module):
    """Sets attributes in forward, as Ultralytics' Detect caches its anchors."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = cbr(3, 8), nn.Conv2d(8, 4, 1)
        self.shape = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.a(x))
        if self.shape != y.shape:
            self.shape = y.shape
            self.cached = torch.zeros(y.shape[0], 1)
        return y


class StackedSum(nn.Module):
    """segmentation_models_pytorch's FPN merge: torch.stack(levels).sum(dim=0)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(3, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.stack([self.a(x), self.b(x)]).sum(dim=0))


class ShapeCache(nn.Module):
    """Ultralytics' Detect: anchors recomputed when the feature map's shape differs from the cached one."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = cbr(3, 16), nn.Conv2d(16, 4, 1)
        self.shape = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.shape != y.shape:
            self.shape, self.grid = y.shape, torch.zeros(y.shape[-2:])
        return self.head(y) + self.grid


def test_shape_reads_guards_and_varargs_trace_and_cut_exactly() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(Guarded(), x)
    graph = secateur.trace(model, x)
    assert group_of(graph, "b.0").prunable      # view(x.size(0), -1) no longer freezes the last conv
    assert group_of(graph, "a.0").prunable
    pruned = exact(model, x, graph)
    assert pruned.fc.in_features < 16 * 4 * 4


def test_chunk_unpacked_into_a_list_and_extended_in_a_loop() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(C2fLike(), x)
    graph = secateur.trace(model, x)
    cv1 = group_of(graph, "cv1.0")
    assert cv1.prunable and cv1.size == 8 and cv1.width == 2   # both halves lose the same positions
    assert group_of(graph, "m.0.0").prunable
    exact(model, x, graph)


def test_a_chunk_that_does_not_divide_the_width_is_cut_to_sizes_chunk_computes_again() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(SplitScales(), x)
    graph = secateur.trace(model, x)
    stem = group_of(graph, "stem.0")
    assert stem.prunable and stem.size == 3     # positions 0-2 of the 3 pieces; 3 of the first two joins 0
    for keep in ([0], [1], [2], [0, 1], [1, 2]):  # every cut: pieces of 2, 2, 1 or 1, 1, 1 or 3, 3, 2 ...
        silenced = copy.deepcopy(model)
        secateur.silence(silenced, stem, np.setdiff1d(np.arange(3), keep))
        pruned = secateur.apply(copy.deepcopy(silenced), graph, secateur.Plan({stem.index: np.array(keep)}))
        with torch.no_grad():
            expected = silenced(x)
            torch.testing.assert_close(pruned(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        assert pruned.stem[0].out_channels == sum(5 if u == 0 else 3 for u in keep)   # unit 0: 0, 4, 8 and 3, 7


@pytest.mark.parametrize("how", ["view", "reshape", "index"])
def test_a_reshaped_per_channel_parameter_is_sliced_with_its_group(how: str) -> None:
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(LayerScaled(how), x)
    graph = secateur.trace(model, x)
    group = group_of(graph, "b")
    assert group.prunable and any(m.site.param == "gamma" for m in group.members)
    pruned = exact(model, x, graph)
    assert pruned.gamma.numel() == pruned.b.out_channels < 16


def test_a_reshape_sized_by_another_tensors_channels_is_frozen_not_broken() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(CrossReshape(), x)
    graph = secateur.trace(model, x)
    for name in ("a.0", "qkv"):
        assert "takes a size from the channels" in (group_of(graph, name).frozen or ""), name
    with pytest.raises(ValueError, match="no prunable layer"):
        secateur.prune(model, x, L1(), amount=0.5)


def test_tied_weights_are_frozen_so_they_stay_tied() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = Tied().eval()
    graph = secateur.trace(model, x)
    for name in ("a", "b"):
        assert "tied" in (group_of(graph, name).frozen or ""), name


def test_attributes_a_forward_sets_are_put_back() -> None:
    model, x = Caching().eval(), torch.randn(2, 3, 8, 8)
    secateur.trace(model, x)
    assert model.shape is None and not hasattr(model, "cached")
    small = secateur.prune(model, x, L1(), amount=0.5)
    assert small.a[0].out_channels == 4 and model.shape is None


class BadScores(L1):
    def __call__(self, group, model):
        s = super().__call__(group, model)
        s[0] = np.nan
        return s


def test_non_finite_scores_are_an_error_naming_the_criterion_and_group() -> None:
    model, x = C2fLike().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"BadScores gave non-finite scores .* group #\d+ \(stem\.0"):
        secateur.prune(model, x, BadScores(), amount=0.5)


def test_a_pruned_model_that_crashes_is_never_returned() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(C2fLike(), x)
    graph = secateur.trace(model, x)
    broken = copy.deepcopy(model)    # code the graph never saw relies on the width of head's input
    broken.head.register_forward_hook(lambda m, args, out: args[0].view(2, 16, 8, 8) and None)
    keep = {g.index: np.arange(g.size // 2) for g in graph.prunable}
    with pytest.raises(secateur.SurgeryError, match=r"fails in 'head' \(Conv2d\).*channel group #"):
        secateur.apply(broken, graph, secateur.Plan(keep))


class StdConv(nn.Conv2d):
    """timm's ScaledStdConv2d: a gain per output channel, each filter standardised over its fan-in."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__(i, o, 3, padding=1)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, o).reshape(o, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.reshape(self.out_channels, -1)
        w = (w - w.mean(1, keepdim=True)) / (w.std(1, keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w.reshape_as(self.weight) * self.gain, self.bias, padding=1)


class StdNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = StdConv(3, 8), StdConv(8, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x).relu()).relu())


def test_a_conv_subclass_has_its_own_tensors_sliced_and_its_inputs_marked_inexact() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = StdNet().eval()
    graph = secateur.trace(model, x)
    a, b = group_of(graph, "a"), group_of(graph, "b")
    assert a.prunable and not a.exact          # b standardises over its fan-in: a's channels are inexact
    assert b.prunable and b.exact              # b's outputs feed a plain conv: exact, gain sliced
    silenced, keep = copy.deepcopy(model), {b.index: np.arange(2, 8)}
    secateur.silence(silenced, b, np.arange(2))
    pruned = secateur.apply(copy.deepcopy(silenced), graph, secateur.Plan(keep))
    assert pruned.b.gain.shape == (6, 1, 1, 1) and pruned.b.out_channels == 6
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), silenced(x), rtol=1e-4, atol=1e-5)
    small = secateur.prune(model, x, L1(), amount=0.5)   # inexact groups still give a working model
    assert small(x).shape == (2, 4, 8, 8) and small.a.gain.shape[0] == small.a.out_channels == 4


def test_stacked_maps_summed_over_the_stack_tie_channel_by_channel() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(StackedSum(), x)
    graph = secateur.trace(model, x)
    group = group_of(graph, "a.0")
    assert group.prunable and group.size == 16 and "b.0" in group.modules(Role.OUT)
    pruned = exact(model, x, graph)
    assert pruned.head.in_channels < 16




def test_a_shape_cache_check_is_not_a_use_of_the_channel_count() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(ShapeCache(), x)
    model(x)   # the cache is filled: the trace compares against a stored shape, not None
    graph = secateur.trace(model, x)
    assert group_of(graph, "a.0").prunable
    assert exact(model, x, graph).a[0].out_channels < 16

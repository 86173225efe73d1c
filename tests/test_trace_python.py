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


def _cbr(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class Guarded(nn.Module):
    """Reads shapes, asserts on the batch, branches on rank: all resolve to the example's values."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _cbr(3, 16), _cbr(16, 16)
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
        self.stem = _cbr(3, 16)
        self.cv1 = _cbr(16, 16)
        self.m = nn.ModuleList(_cbr(8, 8) for _ in range(2))
        self.cv2 = _cbr(32, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(self.stem(x)).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.head(self.cv2(torch.cat(y, 1)))


class LayerScaled(nn.Module):
    """A per-channel parameter reshaped in forward (timm's LayerScale, every ConvNeXt)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = _cbr(3, 16), nn.Conv2d(16, 16, 3, padding=1)
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
        self.a = _cbr(3, 8)
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
        self.a, self.head = _cbr(3, 8), nn.Conv2d(8, 4, 1)
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
        self.a, self.b = _cbr(3, 16), _cbr(3, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.stack([self.a(x), self.b(x)]).sum(dim=0))


class LinearAttention(nn.Module):
    """timm EfficientViT's LiteMLA: heads of literal width, values padded with ones, k^T v then q (k^T v),
    the padded column sliced off as the normaliser."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.dim = dim
        self.stem = _cbr(3, 16)
        self.qkv = nn.Conv2d(16, 3 * 16, 1, bias=False)
        self.proj = _cbr(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, _, h, w = x.shape
        qkv = self.qkv(x).reshape(b, -1, 3 * self.dim, h * w).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = q.relu(), k.relu()
        v = nn.functional.pad(v, (0, 1), mode="constant", value=1.0)
        out = q @ (k.transpose(-1, -2) @ v)
        out = out[..., :-1] / (out[..., -1:] + 1e-5)
        return self.proj(out.transpose(-1, -2).reshape(b, -1, h, w))


class ChannelAttention(nn.Module):
    """EdgeNeXt's cross-covariance attention: a softmax over channels of q @ k^T (a channels x
    channels map per head), applied to v; C read off the input for the final reshape."""

    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        self.transposed = transposed
        self.stem = _cbr(3, 16)
        self.qkv = nn.Linear(16, 48)
        self.temperature = nn.Parameter(torch.rand(2, 1, 1) + 0.5)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, c, h, w = x.shape
        t = x.reshape(b, c, h * w).permute(0, 2, 1)
        bb, n, cc = t.shape
        q, k, v = self.qkv(t).reshape(bb, n, 3, 2, -1).permute(2, 0, 3, 4, 1).unbind(0)
        attn = nn.functional.normalize(q, dim=-1) @ nn.functional.normalize(k, dim=-1).transpose(-2, -1)
        attn = (attn * self.temperature).softmax(dim=-1)
        if self.transposed:
            attn = attn.transpose(-2, -1)
        t = (attn @ v).permute(0, 3, 1, 2).reshape(bb, n, cc)
        return self.head(self.proj(t).permute(0, 2, 1).reshape(b, c, h, w))


class ShapeCache(nn.Module):
    """Ultralytics' Detect: anchors recomputed when the feature map's shape differs from the cached one."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = _cbr(3, 16), nn.Conv2d(16, 4, 1)
        self.shape = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.shape != y.shape:
            self.shape, self.grid = y.shape, torch.zeros(y.shape[-2:])
        return self.head(y) + self.grid


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _exact(model: nn.Module, x: torch.Tensor, graph) -> nn.Module:
    """Silence a third of every exact prunable group, cut it, compare; return the pruned copy."""
    rng = np.random.default_rng(0)
    silenced, keep = copy.deepcopy(model), {}
    for g in (g for g in graph.prunable if g.exact):
        units = np.sort(rng.choice(g.size, size=max(1, g.size // 3), replace=False))
        secateur.silence(silenced, g, units)
        keep[g.index] = np.setdiff1d(np.arange(g.size), units)
    pruned = secateur.apply(copy.deepcopy(silenced), graph, secateur.Plan(keep))
    with torch.no_grad():
        expected, actual = silenced(x), pruned(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    return pruned


def _group_of(graph, module: str):
    return next(g for g in graph.groups if module in g.modules(Role.OUT))


def test_shape_reads_guards_and_varargs_trace_and_cut_exactly() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = _calibrated(Guarded(), x)
    graph = secateur.trace(model, x)
    assert _group_of(graph, "b.0").prunable      # view(x.size(0), -1) no longer freezes the last conv
    assert _group_of(graph, "a.0").prunable
    pruned = _exact(model, x, graph)
    assert pruned.fc.in_features < 16 * 4 * 4


def test_chunk_unpacked_into_a_list_and_extended_in_a_loop() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = _calibrated(C2fLike(), x)
    graph = secateur.trace(model, x)
    cv1 = _group_of(graph, "cv1.0")
    assert cv1.prunable and cv1.size == 8 and cv1.width == 2   # both halves lose the same positions
    assert _group_of(graph, "m.0.0").prunable
    _exact(model, x, graph)


@pytest.mark.parametrize("how", ["view", "reshape", "index"])
def test_a_reshaped_per_channel_parameter_is_sliced_with_its_group(how: str) -> None:
    x = torch.randn(2, 3, 8, 8)
    model = _calibrated(LayerScaled(how), x)
    graph = secateur.trace(model, x)
    group = _group_of(graph, "b")
    assert group.prunable and any(m.site.param == "gamma" for m in group.members)
    pruned = _exact(model, x, graph)
    assert pruned.gamma.numel() == pruned.b.out_channels < 16


def test_a_reshape_sized_by_another_tensors_channels_is_frozen_not_broken() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = _calibrated(CrossReshape(), x)
    graph = secateur.trace(model, x)
    for name in ("a.0", "qkv"):
        assert "takes a size from the channels" in (_group_of(graph, name).frozen or ""), name
    with pytest.raises(ValueError, match="no prunable layer"):
        secateur.prune(model, x, L1(), amount=0.5)


def test_tied_weights_are_frozen_so_they_stay_tied() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = Tied().eval()
    graph = secateur.trace(model, x)
    for name in ("a", "b"):
        assert "tied" in (_group_of(graph, name).frozen or ""), name


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
    model = _calibrated(C2fLike(), x)
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
    a, b = _group_of(graph, "a"), _group_of(graph, "b")
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
    model = _calibrated(StackedSum(), x)
    graph = secateur.trace(model, x)
    group = _group_of(graph, "a.0")
    assert group.prunable and group.size == 16 and "b.0" in group.modules(Role.OUT)
    pruned = _exact(model, x, graph)
    assert pruned.head.in_channels < 16




def test_linear_attention_prunes_whole_heads_exactly() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = _calibrated(LinearAttention(), x)
    graph = secateur.trace(model, x)
    heads = _group_of(graph, "qkv")
    assert heads.prunable and heads.exact and heads.size == 4 and heads.width == 12   # 4 heads of q, k, v
    pruned = _exact(model, x, graph)
    assert pruned.qkv.out_channels % 12 == 0 and pruned.qkv.out_channels < 48


def test_attention_of_ultralytics_prunes_key_and_value_dims_and_keeps_its_widths() -> None:
    block = pytest.importorskip("ultralytics.nn.modules.block")
    x = torch.randn(1, 3, 8, 8)
    model = _calibrated(nn.Sequential(_cbr(3, 64), block.PSABlock(64, attn_ratio=0.5, num_heads=2),
                                      nn.Conv2d(64, 4, 1)), x)
    graph = secateur.trace(model, x)
    keys = next(g for g in graph.groups if "1.attn.qkv.conv" in g.modules(Role.OUT) and not g.exact)
    assert keys.prunable and keys.size == 16 and keys.width == 4   # q and k of each of 2 heads
    values = _group_of(graph, "0.0")   # the block's stream: its values, 32 per head, tied across heads
    assert values.prunable and values.exact and values.size == 32 and values.width == 2
    assert _exact(model, x, graph)[1].attn.head_dim < 32
    pruned = secateur.prune(model, x, L1(), amount=0.5)
    assert pruned[1].attn.key_dim < 16 and pruned[1].attn.head_dim < 32
    assert pruned(x).shape == (1, 4, 8, 8)


def test_a_shape_cache_check_is_not_a_use_of_the_channel_count() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = _calibrated(ShapeCache(), x)
    model(x)   # the cache is filled: the trace compares against a stored shape, not None
    graph = secateur.trace(model, x)
    assert _group_of(graph, "a.0").prunable
    assert _exact(model, x, graph).a[0].out_channels < 16



def test_a_softmax_over_channels_of_an_outer_product_prunes_them_inexactly() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = _calibrated(ChannelAttention(), x)
    graph = secateur.trace(model, x)
    group = _group_of(graph, "stem.0")   # the stream, tied position by position to the 2 x 8 attention channels
    assert group.prunable and not group.exact and group.size == 8 and "qkv" in group.modules(Role.OUT)
    pruned = secateur.prune(model, x, L1(), amount=0.5)
    assert pruned.qkv.out_features == 24 and pruned.proj.in_features == 8 and pruned.temperature.shape == (2, 1, 1)
    kept = np.flatnonzero((pruned.stem[0].weight[:, None] == model.stem[0].weight).flatten(2).all(2).any(0))
    rows = np.concatenate([kept + 16 * i for i in range(3)])   # q, k, v of the kept channels, both heads
    f = nn.functional
    with torch.no_grad():   # the same attention computed over the kept channels only
        s = model.stem(x)[:, kept].flatten(2).transpose(1, 2)
        q, k, v = f.linear(s, model.qkv.weight[rows][:, kept], model.qkv.bias[rows]).reshape(2, 64, 3, 2, 4) \
            .permute(2, 0, 3, 4, 1).unbind(0)
        attn = ((f.normalize(q, dim=-1) @ f.normalize(k, dim=-1).transpose(-2, -1)) * model.temperature).softmax(-1)
        t = f.linear((attn @ v).permute(0, 3, 1, 2).reshape(2, 64, 8), model.proj.weight[kept][:, kept],
                     model.proj.bias[kept])
        expected = f.conv2d(t.transpose(1, 2).reshape(2, 8, 8, 8), model.head.weight[:, kept], model.head.bias)
        torch.testing.assert_close(pruned(x), expected)


def test_an_outer_product_used_any_other_way_is_frozen() -> None:
    x = torch.randn(2, 3, 8, 8)
    graph = secateur.trace(_calibrated(ChannelAttention(transposed=True), x), x)
    assert "two dims (an outer product)" in (_group_of(graph, "qkv").frozen or "")

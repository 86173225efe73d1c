"""Attention the trace follows: heads of literal width (EfficientViT), Ultralytics' Attention with its
width attributes, and attention over channels (EdgeNeXt's cross-covariance attention)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import secateur
from secateur.criteria import L1
from secateur.graph import Role
from trace_helpers import calibrated, cbr, exact, group_of


class LinearAttention(nn.Module):
    """timm EfficientViT's LiteMLA: heads of literal width, values padded with ones, k^T v then q (k^T v),
    the padded column sliced off as the normaliser."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.dim = dim
        self.stem = cbr(3, 16)
        self.qkv = nn.Conv2d(16, 3 * 16, 1, bias=False)
        self.proj = cbr(16, 16)

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
        self.stem = cbr(3, 16)
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



def test_linear_attention_prunes_whole_heads_exactly() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(LinearAttention(), x)
    graph = secateur.trace(model, x)
    heads = group_of(graph, "qkv")
    assert heads.prunable and heads.exact and heads.size == 4 and heads.width == 12   # 4 heads of q, k, v
    pruned = exact(model, x, graph)
    assert pruned.qkv.out_channels % 12 == 0 and pruned.qkv.out_channels < 48


def test_attention_of_ultralytics_prunes_key_and_value_dims_and_keeps_its_widths() -> None:
    block = pytest.importorskip("ultralytics.nn.modules.block")
    x = torch.randn(1, 3, 8, 8)
    model = calibrated(nn.Sequential(cbr(3, 64), block.PSABlock(64, attn_ratio=0.5, num_heads=2),
                                      nn.Conv2d(64, 4, 1)), x)
    graph = secateur.trace(model, x)
    keys = next(g for g in graph.groups if "1.attn.qkv.conv" in g.modules(Role.OUT) and not g.exact)
    assert keys.prunable and keys.size == 16 and keys.width == 4   # q and k of each of 2 heads
    values = group_of(graph, "0.0")   # the block's stream: its values, 32 per head, tied across heads
    assert values.prunable and values.exact and values.size == 32 and values.width == 2
    assert exact(model, x, graph)[1].attn.head_dim < 32
    pruned = secateur.prune(model, x, L1(), amount=0.5)
    assert pruned[1].attn.key_dim < 16 and pruned[1].attn.head_dim < 32
    assert pruned(x).shape == (1, 4, 8, 8)


def test_a_softmax_over_channels_of_an_outer_product_prunes_them_inexactly() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(ChannelAttention(), x)
    graph = secateur.trace(model, x)
    group = group_of(graph, "stem.0")   # the stream, tied position by position to the 2 x 8 attention channels
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
    graph = secateur.trace(calibrated(ChannelAttention(transposed=True), x), x)
    assert "two dims (an outer product)" in (group_of(graph, "qkv").frozen or "")

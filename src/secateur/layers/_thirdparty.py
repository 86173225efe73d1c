"""Blocks of third-party model libraries that keep a width in a plain attribute, named by class so
that neither package is imported here."""
from __future__ import annotations

from ._base import Block, register


class HalfOfCv1(Block):
    """Ultralytics' CSP blocks: ``c`` is half of ``cv1``'s output, split at ``(c, c)`` by the
    ``forward_split`` that its ONNX export swaps in."""

    width_attrs = ("c",)

    def sync_widths(self, m) -> None:
        m.c = _conv(m.cv1).out_channels // 2


def _conv(m):
    return getattr(m, "conv", m)   # Ultralytics' Conv wraps an nn.Conv2d (+ BN, act)


class HeadDims(Block):
    """Ultralytics' ``Attention``: ``qkv`` holds, per head, ``key_dim`` query and key channels and
    ``head_dim`` value channels, split at those attributes. ``scale`` keeps the trained key width's
    value, so pruned keys change the logits only by the terms removed."""

    width_attrs = ("key_dim", "head_dim")

    def sync_widths(self, m) -> None:
        heads = m.num_heads
        m.head_dim = _conv(m.proj).in_channels // heads
        m.key_dim = (_conv(m.qkv).out_channels - heads * m.head_dim) // (2 * heads)


class LevitHeads(Block):
    """timm's LeViT ``Attention`` / ``AttentionDownsample``: per head ``key_dim`` query and key
    channels and ``val_dim`` value channels, kept with their head totals in four attributes."""

    width_attrs = ("key_dim", "val_dim", "key_attn_dim", "val_attn_dim")

    def sync_widths(self, m) -> None:
        heads = m.num_heads
        m.val_attn_dim = m.proj.ln.linear.weight.shape[1]
        m.val_dim = m.val_attn_dim // heads
        q = m.q.ln.linear.weight.shape[0] if hasattr(m, "q") else (m.qkv.linear.weight.shape[0] - m.val_attn_dim) // 2
        m.key_attn_dim, m.key_dim = q, q // heads


_BLOCKS = "ultralytics.nn.modules.block"
register(HalfOfCv1(), *(f"{_BLOCKS}.{name}" for name in ("C2f", "C2fAttn", "RepNCSPELAN4", "C2PSA")))
register(HeadDims(), f"{_BLOCKS}.Attention")
register(LevitHeads(), "timm.models.levit.Attention", "timm.models.levit.AttentionDownsample")

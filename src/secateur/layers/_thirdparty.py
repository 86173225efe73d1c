"""Blocks of third-party model libraries that keep a width in a plain attribute, named by class so
that neither package is imported here."""
from __future__ import annotations

from ._base import Block, register


class HalfOfCv1(Block):
    """Ultralytics' CSP blocks: ``c`` is half of ``cv1``'s output, split at ``(c, c)`` by the
    ``forward_split`` that its ONNX export swaps in."""

    width_attrs = ("c",)

    def sync_widths(self, m) -> None:
        cv1 = getattr(m.cv1, "conv", m.cv1)
        m.c = cv1.out_channels // 2


_BLOCKS = "ultralytics.nn.modules.block"
register(HalfOfCv1(), *(f"{_BLOCKS}.{name}" for name in ("C2f", "C2fAttn", "RepNCSPELAN4", "C2PSA")))

"""What a model costs: :class:`Stats`, its ratio to a baseline, and an aligned comparison table."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Stats", "byte_size", "si_count", "table"]


@dataclass(frozen=True)
class Stats:
    """Cost of one model on one input.

    Attributes:
        params: parameter elements, each shared parameter counted once.
        macs: multiply-accumulates of one forward pass (``FlopCounterMode`` FLOPs ÷ 2).
        latency_ms: median forward time in milliseconds, or ``None`` if not measured.
        latency_spread_ms: interquartile range (p75 - p25) of the timed runs, or ``None``.
        bytes: size of the weights as ``secateur.io.save`` writes them (safetensors).
    """

    params: int
    macs: int
    latency_ms: float | None
    latency_spread_ms: float | None
    bytes: int

    def ratio(self, base: Stats) -> dict[str, float]:
        """Pruned ÷ ``base`` per quantity: ``params_ratio``, ``macs_ratio``, ``bytes_ratio`` and,
        when both have it, ``latency_ratio``. A zero in ``base`` gives ``nan``."""
        pairs = {"params": (self.params, base.params), "macs": (self.macs, base.macs),
                 "latency": (self.latency_ms, base.latency_ms), "bytes": (self.bytes, base.bytes)}
        return {f"{name}_ratio": _divide(a, b) for name, (a, b) in pairs.items()
                if a is not None and b is not None}

    def cells(self) -> dict[str, str]:
        """Human-readable values, keyed by column title."""
        return {"params": si_count(self.params), "MACs": si_count(self.macs),
                "latency": _latency(self.latency_ms, self.latency_spread_ms),
                "size": byte_size(self.bytes)}

    def __str__(self) -> str:
        return "  ".join(f"{title} {value}" for title, value in self.cells().items())


def _divide(a: float, b: float) -> float:
    return a / b if b else math.nan


def si_count(n: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:g}"


def byte_size(n: int) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n} B"


def _latency(median: float | None, spread: float | None) -> str:
    if median is None:
        return "-"
    return f"{median:.3g} ± {spread:.2g} ms" if spread is not None else f"{median:.3g} ms"


_RATIO_OF = {"params": "params_ratio", "MACs": "macs_ratio", "latency": "latency_ratio",
             "size": "bytes_ratio"}


def table(rows: Mapping[str, Stats] | Iterable[tuple[str, Stats]]) -> str:
    """An aligned text table of named :class:`Stats`; rows after the first also show the ratio to
    the first (e.g. ``0.52x``). Returns the table; print it yourself."""
    items = list(rows.items() if isinstance(rows, Mapping) else rows)
    if not items:
        return ""
    base = items[0][1]
    titles = ["model", *_RATIO_OF]
    lines = [titles]
    for i, (name, stats) in enumerate(items):
        ratios = stats.ratio(base)
        cells = stats.cells()
        lines.append([name] + [
            f"{cells[t]} ({ratios[key]:.2f}x)" if i > 0 and key in ratios else cells[t]
            for t, key in _RATIO_OF.items()
        ])
    widths = [max(len(line[c]) for line in lines) for c in range(len(titles))]
    fmt = [str.ljust] + [str.rjust] * (len(titles) - 1)
    return "\n".join("  ".join(f(cell, w) for f, cell, w in zip(fmt, line, widths, strict=True)).rstrip()
                     for line in lines)

"""Report plots, drawn with matplotlib's Agg canvas (no display, no pyplot global state).

Every ``plot_*`` function validates its input (a one-line ``ValueError``/``TypeError`` naming the
culprit), writes a PNG atomically (a temporary file next to ``path``, then a rename) and returns the
path. An existing file at ``path`` is replaced.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from secateur.io import atomic_file

__all__ = ["plot_acc_vs_macs", "plot_finetune", "plot_gammas", "plot_rate_curves", "plot_widths"]

DPI = 110


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("secateur.report plots need matplotlib: pip install 'secateur[report]'") from None
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"plot path {str(target)!r} must end in .png")
    with atomic_file(target, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return target


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _nonempty_mapping(value, what: str) -> Mapping:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{what} must be a non-empty dict, got {type(value).__name__}"
                         f"{' (empty)' if isinstance(value, Mapping) else ''}")
    return value


def plot_widths(before: Mapping[str, int], after: Mapping[str, int], path) -> Path:
    """Bar chart of the output width of each layer before and after pruning, layers in ``before``'s
    order (then any only in ``after``); a layer missing from one side shows as 0 there."""
    _nonempty_mapping(before, "plot_widths: before")
    _nonempty_mapping(after, "plot_widths: after")
    names = list(before) + [n for n in after if n not in before]
    b = [_number(before.get(n, 0), f"plot_widths: before[{n!r}]") for n in names]
    a = [_number(after.get(n, 0), f"plot_widths: after[{n!r}]") for n in names]
    crowded = len(names) > 30
    fig = _figure(min(16.0, max(6.0, 0.42 * len(names) + 2)), 4.6 if crowded else 4.2)
    ax = fig.add_subplot()
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], b, width=0.4, label="before", color="#b0b0b0")
    bars = ax.bar([x + 0.2 for x in xs], a, width=0.4, label="after", color="#2b7bba")
    if len(names) <= 40:
        ax.bar_label(bars, labels=[f"{int(v)}" for v in a], fontsize=7, padding=1)
    ax.set_xticks(list(xs), names, rotation=90 if crowded else 60, ha="right", rotation_mode="anchor",
                  va="center" if crowded else "top", fontsize=6 if crowded else 8)
    ax.set_xlim(-0.7, len(names) - 0.3)
    ax.set_ylabel("output channels / features")
    ax.set_title(f"Layer widths: {int(sum(a))} of {int(sum(b))} channels kept ({sum(a) / max(sum(b), 1):.0%})")
    ax.legend(loc="upper left")
    ax.margins(y=0.1)
    return _save(fig, path)


def plot_gammas(gammas_by_label: Mapping[str, Sequence[float]], path, *, bins: int = 50) -> Path:
    """Histograms of BatchNorm scale factors (γ), one panel per label, log-scaled counts; the bins
    are shared so the panels compare directly."""
    _nonempty_mapping(gammas_by_label, "plot_gammas: gammas_by_label")
    data = {}
    for label, values in gammas_by_label.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"plot_gammas: gammas_by_label[{label!r}] must be a non-empty list of numbers")
        data[str(label)] = [_number(v, f"plot_gammas: gammas_by_label[{label!r}] entry") for v in values]
    lo = min(min(v) for v in data.values())
    hi = max(max(v) for v in data.values())
    hi = hi if hi > lo else lo + 1.0
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    cols = min(len(data), 3)
    rows = math.ceil(len(data) / cols)
    fig = _figure(4.2 * cols, 3.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for ax, (label, values) in zip(axes.flat, data.items()):
        ax.hist(values, bins=edges, color="#2b7bba", log=True)
        small = sum(abs(v) < 1e-2 for v in values)
        ax.set_title(f"{label}: {len(values)} γ, {small / len(values):.0%} below 0.01", fontsize=9)
        ax.set_xlabel("γ")
        ax.set_ylabel("count (log)")
    for ax in list(axes.flat)[len(data):]:
        ax.set_visible(False)
    fig.suptitle("BatchNorm scale factors")
    return _save(fig, path)


def _curve(points, what: str) -> list[tuple[float, float]]:
    if isinstance(points, (str, bytes)) or not isinstance(points, Sequence) or not points:
        raise ValueError(f"{what} must be a non-empty list of (rate, acc) pairs")
    out = []
    for p in points:
        if not isinstance(p, Sequence) or len(p) != 2:
            raise ValueError(f"{what} entry {p!r} is not a (rate, acc) pair")
        out.append((_number(p[0], f"{what} rate"), _number(p[1], f"{what} acc")))
    return sorted(out)


def plot_rate_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path, baseline: float | None = None,
                     *, xlabel: str = "pruning rate", title: str = "Accuracy vs pruning rate") -> Path:
    """Accuracy against pruning rate, one line per layer or method, with an optional dashed
    baseline accuracy."""
    _nonempty_mapping(curves, "plot_rate_curves: curves")
    data = {str(k): _curve(v, f"plot_rate_curves: curves[{k!r}]") for k, v in curves.items()}
    fig = _figure(7.5 if len(data) > 8 else 6.0, 4.2)
    ax = fig.add_subplot()
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(data) <= 10 else "tab20"].colors
    for i, (label, pts) in enumerate(data.items()):  # beyond 20 lines, colours repeat with new dashes
        ax.plot([r for r, _ in pts], [a for _, a in pts], marker="o", markersize=3, linewidth=1.2, label=label,
                color=palette[i % len(palette)], linestyle=("-", "--", ":", "-.")[i // len(palette) % 4])
    if baseline is not None:
        ax.axhline(_number(baseline, "plot_rate_curves: baseline"), color="black", linestyle="--",
                   linewidth=1, label="baseline")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(data) > 8:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), ncols=1 + len(data) // 20)
    else:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _clusters(rows: list[tuple[str, float, float]]) -> list[list[tuple[str, float, float]]]:
    """Group points closer than ~4% of the axis ranges in both x and y (single linkage)."""
    xs, ys = [r[1] for r in rows], [r[2] for r in rows]
    dx, dy = 0.04 * ((max(xs) - min(xs)) or 1), 0.06 * ((max(ys) - min(ys)) or 1)
    groups: list[list[tuple[str, float, float]]] = []
    for row in rows:
        near = [g for g in groups if any(abs(row[1] - o[1]) <= dx and abs(row[2] - o[2]) <= dy for o in g)]
        merged = [row] + [p for g in near for p in g]
        groups = [g for g in groups if all(g is not m for m in near)] + [merged]
    return groups


def plot_acc_vs_macs(points: Sequence[Mapping], path, baseline_acc: float | None = None) -> Path:
    """Scatter of accuracy against the fraction of MACs kept, each point labelled; an optional
    dashed line marks the baseline accuracy. ``points``: dicts with ``label``, ``macs_ratio``, ``acc``."""
    if isinstance(points, (str, bytes)) or not isinstance(points, Sequence) or not points:
        raise ValueError("plot_acc_vs_macs: points must be a non-empty list of dicts")
    rows = []
    for i, p in enumerate(points):
        missing = [k for k in ("label", "macs_ratio", "acc") if not isinstance(p, Mapping) or k not in p]
        if missing:
            raise ValueError(f"plot_acc_vs_macs: points[{i}] lacks {', '.join(missing)}")
        rows.append((str(p["label"]), _number(p["macs_ratio"], f"plot_acc_vs_macs: points[{i}]['macs_ratio']"),
                     _number(p["acc"], f"plot_acc_vs_macs: points[{i}]['acc']")))
    fig = _figure(6.0, 4.4)
    ax = fig.add_subplot()
    ax.scatter([r for _, r, _ in rows], [a for _, _, a in rows], color="#2b7bba", zorder=3)
    lo, hi = min(r for _, r, _ in rows), max(r for _, r, _ in rows)
    for cluster in _clusters(rows):
        # labels of nearby points: a column beside them (left of points in the right third, else
        # right), highest accuracy on top, with leader lines when there are several
        n = len(cluster)
        left = hi > lo and min(r for _, r, _ in cluster) > lo + 0.66 * (hi - lo)
        for k, (label, ratio, acc) in enumerate(sorted(cluster, key=lambda t: -t[2])):
            dy = 6 * (n - 1) - 12 * k - 3
            ax.annotate(label, (ratio, acc), xytext=(-10 if left else 10, dy), textcoords="offset points",
                        fontsize=8, va="center", ha="right" if left else "left", zorder=4,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6} if n > 1 else None)
    if baseline_acc is not None:
        ax.axhline(_number(baseline_acc, "plot_acc_vs_macs: baseline_acc"), color="black", linestyle="--",
                   linewidth=1, label="baseline accuracy")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("MACs kept (fraction of baseline)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs MACs")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    return _save(fig, path)


def plot_finetune(history: Sequence[Mapping], path) -> Path:
    """Training curves from ``secateur.train.fit``'s history: loss (train and eval) and accuracy
    (train and eval) per epoch, in two panels. Entries need ``epoch`` and at least one of ``loss``,
    ``eval_loss``, ``acc``, ``eval_acc``."""
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence) or not history:
        raise ValueError("plot_finetune: history must be a non-empty list of per-epoch dicts")
    keys = ("loss", "eval_loss", "acc", "eval_acc")
    for i, h in enumerate(history):
        if not isinstance(h, Mapping) or "epoch" not in h:
            raise ValueError(f"plot_finetune: history[{i}] is not a dict with an 'epoch'")
        if not any(k in h for k in keys):
            raise ValueError(f"plot_finetune: history[{i}] has none of {', '.join(keys)}")
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9.0, 3.6)
    panels = fig.subplots(1, 2)
    for ax, (kind, pair) in zip(panels, (("loss", ("loss", "eval_loss")), ("accuracy", ("acc", "eval_acc")))):
        for key, style in zip(pair, ("-", "--")):
            pts = [(_number(h["epoch"], f"plot_finetune: history[{i}]['epoch']"),
                    _number(h[key], f"plot_finetune: history[{i}][{key!r}]"))
                   for i, h in enumerate(history) if key in h and h[key] is not None]
            if pts:
                label = ("eval" if key.startswith("eval") else "train")
                ax.plot([e for e, _ in pts], [v for _, v in pts], style, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(kind)
        ax.set_title(f"Fine-tuning {kind}")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {kind} recorded", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)

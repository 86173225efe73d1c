"""Where the time goes: each conv/linear layer's share of the latency on a runtime, of the MACs, the
bytes it moves, and whether it is memory-bound.

A layer's milliseconds are its time inside the model where the runtime profiles its own operations
(ONNX Runtime, OpenVINO, MNN; PyTorch by forward hooks), else its timing alone (the latency table at
full width, scaled as the table fits the whole model). Bytes moved: its input and output activations
plus its weights, in float32. Memory-bound: its arithmetic intensity (2 MACs per byte moved) is below
this model's own ridge point on this runtime, the best throughput any of its layers reaches divided by
the best bandwidth any of them reaches (an empirical roofline: no peak figures assumed).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..forward import inference
from ..measure import macs_by_module
from ._tables import latency_table


@dataclass(frozen=True)
class LayerProfile:
    module: str
    kind: str
    ms: float
    latency_share: float   # of the model's predicted latency (layers plus the rest)
    macs: int
    macs_share: float      # of the model's conv/linear MACs
    bytes: int
    memory_bound: bool

    @property
    def intensity(self) -> float:
        return 2 * self.macs / max(self.bytes, 1)


def profile(model: nn.Module, graph, runtime: str = "torch", *, threads: int = 1,
            progress: bool = True) -> tuple[list[LayerProfile], float]:
    """Per-layer profile of ``model`` (``graph`` = ``secateur.trace(model, x)``) on ``runtime``, and the
    model's predicted latency in ms. Layers are listed by latency, slowest first."""
    table = latency_table(model, graph, runtime, threads=threads, points=1, progress=progress)
    moved: dict[str, int] = {}

    def hook(name):
        def record(m, inputs, out):
            acts = sum(t.numel() for t in (*inputs, out) if isinstance(t, torch.Tensor))
            moved[name] = moved.get(name, 0) + 4 * (acts + sum(p.numel() for p in m.parameters(recurse=False)))
        return record
    hooks = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name in table.curves]
    try:
        with inference(model, None):
            model(*graph.example_inputs)
    finally:
        for h in hooks:
            h.remove()
    with inference(model, None):
        macs = {name: n for name, n in macs_by_module(model, graph.example_inputs).items() if name in table.curves}
    total_ms, total_macs = table.total(), max(sum(macs.values()), 1)
    ms = {name: table.scale * curve.full for name, curve in table.curves.items()}
    speed = [2 * macs[n] / ms[n] for n in ms if ms[n] > 0]
    bandwidth = [moved.get(n, 0) / ms[n] for n in ms if ms[n] > 0]
    ridge = max(speed, default=0.0) / max(max(bandwidth, default=0.0), 1e-9)
    rows = [LayerProfile(n, type(model.get_submodule(n)).__name__, ms[n], ms[n] / total_ms, macs[n],
                         macs[n] / total_macs, moved.get(n, 0), 2 * macs[n] / max(moved.get(n, 0), 1) < ridge)
            for n in ms]
    return sorted(rows, key=lambda r: -r.ms), total_ms


def format_profile(rows: list[LayerProfile], total_ms: float, runtime: str, limit: int | None = None) -> str:
    head = ("layer", "type", "ms", "latency", "MACs", "MB moved", "MACs/B", "bound")
    lines = [head] + [(r.module, r.kind, f"{r.ms:.3f}", f"{100 * r.latency_share:.1f} %", f"{100 * r.macs_share:.1f} %",
                       f"{r.bytes / 1e6:.2f}", f"{r.intensity / 2:.1f}", "memory" if r.memory_bound else "compute")
                      for r in rows[:limit]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    body = "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)
    layers = sum(r.ms for r in rows)
    if total_ms - layers > 1e-6 * total_ms:
        head = (f"{runtime}: {total_ms:.3f} ms, of which {layers:.3f} ms in conv/linear layers "
                f"({100 * layers / max(total_ms, 1e-9):.0f} %)")
    else:   # the layers' times add up to the model's or more (the fit leaves nothing over): scaled to it
        head = f"{runtime}: {total_ms:.3f} ms, shared out over the conv/linear layers (their times scaled to it)"
    return f"{head}\n{body}"


def plot_profile(rows: list[LayerProfile], path, runtime: str, limit: int = 30) -> None:
    """A bar chart of the slowest layers: latency share beside MAC share, memory-bound ones marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = rows[:limit]
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(shown) + 1.5))
    y = range(len(shown))
    ax.barh([i - 0.2 for i in y], [100 * r.latency_share for r in shown], 0.4, label=f"latency ({runtime})",
            color=["tab:red" if r.memory_bound else "tab:blue" for r in shown])
    ax.barh([i + 0.2 for i in y], [100 * r.macs_share for r in shown], 0.4, label="MACs", color="tab:gray")
    ax.set_yticks(list(y), [f"{r.module} ({'memory' if r.memory_bound else 'compute'})" for r in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("% of the model")
    ax.legend(loc="lower right")
    ax.set_title("where the time goes (red: memory-bound)")
    fig.tight_layout()
    from pathlib import Path
    from ..io import atomic_file
    with atomic_file(Path(path), overwrite=False) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

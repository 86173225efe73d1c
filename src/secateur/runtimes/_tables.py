"""Per-layer latency tables: how long each conv/linear layer takes on a runtime as its widths shrink.

For each weighted layer, at the input shape it sees in the model (batch included), the layer alone is
timed on the runtime at a grid of kept output widths (all inputs kept) and of kept input widths (all
outputs kept): multiples of 8 (of ``groups`` for grouped convs), 16 points a curve at most, plus the
full width. A depthwise conv has one curve (its inputs, outputs and groups shrink together). Each point
is timed for at least ``MIN_MS`` of runs (median), and each curve is made non-decreasing from below
(:func:`monotone`): a layer is never slower with fewer channels on a grid of multiples of 8, so a point
above a wider one was slowed by the machine (small layers at batch 1 take tenths of a millisecond). A width between
grid points costs what the next grid point above it costs (the staircase, read conservatively), and a
layer at ``(c_in, c_out)`` is predicted as ``out(c_out) * in(c_in) / in(full)``.

Every timing is cached on disk (``$SECATEUR_CACHE``, else ``$XDG_CACHE_HOME/secateur/latency``, one JSON file per machine,
runtime, runtime version and thread count, keyed by the layer's signature and widths; each model's fit
keyed by what the model computes), so a second table for the same model measures nothing. ONNX runtimes time a one-node ONNX graph written here
(no exporter run per point); PyTorch runtimes time the layer itself. A point is timed by the backend's
``kernels``: without converting the layer's input and output between PyTorch's layout and the
runtime's own, which a lone layer pays and a model pays once (OpenVINO's own per-node timings less its
reorders; MNN on inputs already in its layout): charged to the layers, those conversions made 224-px
layers look 2-3x dearer than they are inside the model, and the planner thinned them first.
"""
from __future__ import annotations

import hashlib
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..layers import handler_for, is_weighted
from ._base import alternating, backend, prepare, repeats_for
from ._cache import cache_file, read, source, store
from ._nodes import module_calls

MIN_MS = 20.0     # each table point is timed for at least this many milliseconds of runs


@dataclass
class Curve:
    """Milliseconds of one layer (all its calls) at grid widths: kept outputs and kept inputs."""

    out_widths: list[int]
    out_ms: list[float]
    in_widths: list[int]
    in_ms: list[float]
    depthwise: bool = False

    @property
    def full(self) -> float:
        """Milliseconds at full width (the last point of the output curve)."""
        return self.out_ms[-1]

    @staticmethod
    def _at(widths: list[int], ms: list[float], w: int) -> float:
        i = int(np.searchsorted(widths, w))
        return ms[min(i, len(ms) - 1)]

    def ms(self, c_in: int, c_out: int) -> float:
        out = self._at(self.out_widths, self.out_ms, c_out)
        if self.depthwise or not self.in_ms or self.in_ms[-1] <= 0:
            return out
        return out * self._at(self.in_widths, self.in_ms, c_in) / self.in_ms[-1]


@dataclass
class LatencyTable:
    """Predicted latency of a model's weighted layers at any widths, from measured curves.

    ``layer(module, c_in, c_out)``: milliseconds of that layer, ``scale`` times its timing alone;
    ``fixed``: what the rest of the model takes. The two are fitted to the whole model measured at
    full width and with every group at half width (``whole = fixed + scale * sum of layers``): alone,
    each layer pays a call's overhead, and in the model the runtime fuses BN and activations into
    it and runs steps the layers do not count. Where the runtime profiles its own operations, each
    curve is first weighed by its layer's time inside the model (``inside``: how many layers were), so
    that the fit corrects what is common to all layers and the profile what differs between them.
    ``seconds``: the time spent building the table; ``measured`` / ``hits``: timings made / read from
    the cache; ``fitted``: whether the fit (the profile's maps, ``scale`` and ``fixed``) was measured
    now, else read from the cache, where each model's fit is kept beside its points (timed afresh
    each call, it moved the first plan from call to call).
    """

    runtime: str
    threads: int
    curves: dict[str, Curve]
    fixed: float = 0.0
    scale: float = 1.0
    seconds: float = 0.0
    inside: int = 0
    measured: int = 0
    hits: int = 0
    fitted: bool = False
    cache: Path | None = field(default=None, repr=False)

    def layer(self, module: str, c_in: int, c_out: int) -> float:
        curve = self.curves.get(module)
        return self.scale * curve.ms(c_in, c_out) if curve is not None else 0.0

    def predict(self, model: nn.Module) -> float:
        """The predicted latency of ``model`` (this model, or a pruned copy of it), from its layers' widths."""
        widths = {name: _widths(m) for name, m in model.named_modules() if name in self.curves}
        return self.scale * sum(self.curves[n].ms(*w) for n, w in widths.items()) + self.fixed

    def total(self) -> float:
        """The predicted latency of the unpruned model (layers plus the rest)."""
        return self.scale * sum(c.full for c in self.curves.values()) + self.fixed


def monotone(ms: list[float]) -> list[float]:
    """``ms`` (in order of width) made non-decreasing from below: each point the least time measured at its
    width or wider. Timing noise on a CPU is one-sided (a run is slowed, never sped up, by what else
    the machine does), so a point above a wider one was slowed: MNN, a lone 1x1 conv at 56 px, 40 of
    64 inputs timed 0.58 ms once and 0.30 the next time (48: 0.34). Isotonic regression, which
    averages, turned such a spike into a plateau up to the full width, and the planner then saw no
    saving in thinning that layer."""
    out = list(ms)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return out


def grid(size: int, unit: int = 8, points: int = 16) -> list[int]:
    """Kept widths to time for a dim of ``size``: multiples of ``unit`` (at most ``points``) and ``size``."""
    unit = max(1, unit)
    step = unit * max(1, math.ceil(size / unit / points))
    return sorted({w for w in range(step, size, step)} | {size})


def _variant(layer: nn.Module, c_in: int, c_out: int) -> nn.Module:
    """A plain layer like ``layer`` at the given widths (random weights: only its time matters)."""
    torch.manual_seed(0)
    return handler_for(layer).plain(layer, c_in, c_out)


def _onnx(layer: nn.Module, shape: tuple[int, ...], path: Path) -> bool:
    """Write ``layer`` as a one-node ONNX graph; False when it is not a plain conv/linear."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = layer.weight.detach().numpy()
    inits = [numpy_helper.from_array(w.T.copy() if isinstance(layer, nn.Linear) else w, "w")]
    has_bias = layer.bias is not None
    if has_bias:
        inits.append(numpy_helper.from_array(layer.bias.detach().numpy(), "b"))
    if isinstance(layer, nn.Linear):
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y0" if has_bias else "y"])]
        if has_bias:
            nodes.append(helper.make_node("Add", ["y0", "b"], ["y"]))
    else:
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            return False
        nodes = [helper.make_node("Conv", ["x", "w"] + (["b"] if has_bias else []), ["y"],
                                  kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                                  pads=list(layer.padding) * 2, dilations=list(layer.dilation), group=layer.groups)]
    model = helper.make_model(helper.make_graph(nodes, "layer", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, os.fspath(path))
    return True


def _time(layer: nn.Module, shape: tuple[int, ...], runtime: str, threads: int, repeats: int) -> float:
    x = torch.randn(shape)
    with tempfile.TemporaryDirectory(prefix="secateur-table-") as folder:
        if not runtime.startswith("torch"):
            _onnx(layer, shape, Path(folder) / "model.onnx")   # else the runtime exports it itself
        # a point is timed, never shipped: checked loosely, since a runtime's fast algorithms (MNN's
        # Winograd 3x3 convs) miss PyTorch by ~1e-3 on random weights; a model is checked at prepare's rtol
        p = prepare(layer, x, runtime, threads=threads, folder=folder, rtol=1e-2)
        repeats = repeats_for(p, MIN_MS, least=repeats, most=200, probe=3)
        return backend(runtime).kernels(p, Path(folder), threads, repeats)


def _inputs(model: nn.Module, example_inputs, modules: set[str]) -> dict[str, list[tuple[int, ...]]]:
    """The input shape of every call of each of ``modules`` on the example inputs."""
    shapes: dict[str, list[tuple[int, ...]]] = {}
    for name, shape in module_calls(model, example_inputs, modules):
        shapes.setdefault(name, []).append(shape)
    return shapes


def latency_table(model: nn.Module, graph, runtime: str = "torch", *, threads: int = 1, repeats: int = 7,
                  points: int = 16, cache: str | os.PathLike | None = None, progress: bool = True) -> LatencyTable:
    """Time ``model``'s weighted layers (those ``graph`` = ``secateur.trace(model, x)`` found) on
    ``runtime`` at the shapes they see on the trace's example inputs, at most ``points`` widths a
    curve (1: the full width only); see the module's docstring."""
    start = time.perf_counter()
    path = cache_file(runtime, threads, cache)
    stored = read(path)
    modules = {call.module for call in graph.calls}
    shapes = _inputs(model, graph.example_inputs, modules)
    jobs = []
    for name in sorted(shapes):
        layer = model.get_submodule(name)
        if not is_weighted(layer):
            continue
        c_in, c_out, groups = handler_for(layer).io(layer)
        if handler_for(layer).plain(layer, c_in, c_out) is None:   # none to time (a transposed conv)
            continue
        depthwise = groups == c_in and c_in > 1 and c_out == c_in
        unit = 8 if groups == 1 or depthwise else math.lcm(8, groups)
        outs = grid(c_out, unit, points)
        ins = [] if depthwise else grid(c_in, unit, points)
        pairs = [(w, w) if depthwise else (c_in, w) for w in outs] + [(w, c_out) for w in ins]   # full: twice
        jobs.append((name, layer, depthwise, outs, ins, pairs))
    total_points = sum(len(set(j[5])) * len(shapes[j[0]]) for j in jobs)
    bar = _bar(total_points, f"latency table ({runtime})", progress)
    curves, measured, hits = {}, 0, 0
    for name, layer, depthwise, outs, ins, pairs in jobs:
        ms: dict[tuple[int, int], float] = {}
        for ci, co in dict.fromkeys(pairs):
            t = 0.0
            for shape in shapes[name]:
                x_shape = list(shape)
                x_shape[handler_for(layer).channel_dim(layer)] = ci
                x_shape = tuple(x_shape)
                key = f"{type(layer).__name__}|{handler_for(layer).signature(layer)}|x={x_shape}|out={co}"
                if key not in stored:
                    stored[key] = _time(_variant(layer, ci, co), x_shape, runtime, threads, repeats)
                    measured += 1
                else:
                    hits += 1
                t += stored[key]
                bar.update(1)
            ms[(ci, co)] = t
        curves[name] = Curve(outs, monotone([ms[p] for p in pairs[:len(outs)]]),
                             ins, monotone([ms[p] for p in pairs[len(outs):]]), depthwise)
    bar.close()
    table = LatencyTable(runtime, threads, curves, seconds=0.0, measured=measured, hits=hits, cache=path)
    key = _fit_key(model, graph, runtime, points)
    if key in stored:   # this model was fitted before: the same fit, read back (a plan no longer moves with it)
        _map(table, stored[key]["maps"])
        table.inside, table.scale, table.fixed = (stored[key][k] for k in ("inside", "scale", "fixed"))
    else:
        with tempfile.TemporaryDirectory(prefix="secateur-table-") as folder:
            both = [(prepare(m, graph.example_inputs, runtime, threads=threads, folder=Path(folder) / tag),
                     Path(folder) / tag) for m, tag in ((model, "full"), (_halved(model, graph), "half"))]
            maps = _weigh(table, both, runtime, threads, repeats)
            _map(table, maps)
            _fit(table, [p for p, _ in both], repeats)
        stored[key] = dict(maps=maps, inside=table.inside, scale=table.scale, fixed=table.fixed)
        table.fitted = True
    if measured or table.fitted:
        store(path, stored)
    table.seconds = time.perf_counter() - start
    return table


def _fit_key(model: nn.Module, graph, runtime: str, points: int) -> str:
    """The cache key of ``model``'s fit: what it computes (its modules, their classes' code, the calls
    and input shapes the trace saw, its dtypes), how it is fitted (this module's fitting code, the backend's
    profiling code) and the grid; a change in any of them fits again."""
    classes = sorted({type(m) for m in model.modules()} | {type(backend(runtime))}, key=lambda c: c.__qualname__)
    dtypes = sorted({str(t.dtype) for t in (*model.parameters(), *model.buffers())})
    parts = [repr(model), repr(graph.calls), repr(graph.input_shapes), str(dtypes), str(points),
             *(source(f) or f.__qualname__ for f in (*classes, _half, _halved, _weigh, _map, _fit))]
    return "fit|" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _widths(m: nn.Module) -> tuple[int, int]:
    return handler_for(m).io(m)[:2]


def _half(size: int) -> int:
    """About half of ``size`` kept, on the grid (a multiple of 8, as the planner keeps): a width off
    it (24 -> 12) sends the whole model down a runtime's slow path (ONNX Runtime's blocked layout
    needs multiples of 8) and the fit would read that as the layers saving little."""
    return size if size <= 8 else max(8, int(size / 16 + 0.5) * 8)


def _halved(model: nn.Module, graph) -> nn.Module:
    """A copy of ``model`` with about half of every prunable group kept (see :func:`_half`)."""
    import copy
    from ..plan import Plan
    from ..surgery import apply
    return apply(copy.deepcopy(model), graph,
                 Plan.from_masks({g.index: np.arange(g.size) >= g.size - _half(g.size) for g in graph.prunable}))


def _weigh(table: LatencyTable, both: list, runtime: str, threads: int, repeats: int) -> dict:
    """How to map each curve onto its layer's time inside the model, where the runtime profiles its own
    operations (``both``: the model at full and at about half width, prepared, with their folders).
    Inside a model a runtime fuses a layer with its neighbours, picks algorithms by shape, and reads
    weights that the layers before evicted from the caches, so a layer's time inside differs from its
    time alone, by type and by width (MNN, 2 threads, ResNet-50: 1x1 convs at 0.6 of their time alone,
    stride-1 3x3 convs at 1.7-2.2x; layer4's 3x3 at half width 2.8x, memory-bound inside, cached alone).
    Each curve is mapped by ``ms -> c * ms ** power``, the two fitted so that it gives the layer's own
    time inside both models: a monotone map, so that the staircase and its order are kept. A layer
    the profile misses keeps its curve, scaled by the median of the others. ``table.inside``: how
    many layers were mapped by their own times."""
    repeats = repeats_for(both[0][0], 25 * MIN_MS, least=repeats, most=50, probe=3)   # ~0.5 s of runs
    inside = [backend(runtime).layer_times(p, folder, threads, repeats) for p, folder in both]
    half = {name: _widths(m) for name, m in both[1][0].model.named_modules() if name in table.curves}
    maps: dict[str, tuple[float, float]] = {}
    for name, curve in table.curves.items():
        t_full, t_half = inside[0].get(name, 0.0), inside[1].get(name, 0.0)
        a_full, a_half = curve.full, curve.ms(*half[name]) if name in half else curve.full
        if t_full <= 0 or a_full <= 0:
            continue
        power = 1.0
        if 0 < t_half < t_full and 0 < a_half < a_full:
            power = min(4.0, max(0.25, math.log(t_full / t_half) / math.log(a_full / a_half)))
        maps[name] = (t_full / a_full ** power, power)
    table.inside = len(maps)
    if not maps:
        return {}
    rest = (statistics.median(inside[0][name] / table.curves[name].full for name in maps), 1.0)
    return {name: maps.get(name, rest) for name in table.curves}


def _map(table: LatencyTable, maps: dict) -> None:
    """Apply :func:`_weigh`'s maps, ``name -> (c, power)``, to the table's curves: ``ms -> c * ms ** power``."""
    for name, (c, power) in maps.items():
        curve = table.curves[name]
        curve.out_ms = [c * v ** power for v in curve.out_ms]
        curve.in_ms = [c * v ** power for v in curve.in_ms]


def _fit(table: LatencyTable, both: list, repeats: int) -> None:
    """Set ``scale`` and ``fixed`` from the whole model at full width and at about half width
    (``both``, prepared), timed in alternating rounds (medians), so that a machine's drift cancels."""
    full, part = table.predict(both[0].model), table.predict(both[1].model)
    whole, small = alternating(both, repeats, rounds=3)
    scale = (whole - small) / (full - part) if full > part and whole > small else whole / max(full, 1e-9)
    table.scale = max(scale, 1e-6)
    table.fixed = whole - table.scale * full
    if table.fixed < 0:   # never a negative rest: the layers scaled to the whole model instead
        table.scale, table.fixed = whole / max(full, 1e-9), 0.0


def _bar(total: int, desc: str, show: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not show, leave=False)

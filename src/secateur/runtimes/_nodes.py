"""Which ONNX node runs which PyTorch module: a runtime profiles its operations by node (OpenVINO by
the ONNX node's name, MNN by its first output's name, ONNX Runtime by a name of what it fused:
``fused_owners``), and a latency table needs them by module.

The exporter writes the graph in PyTorch's call order, so the k-th weighted node (Conv, ConvTranspose,
Gemm, or a MatMul by a constant) is the k-th call of a weighted module; each pair is checked by the
weight's shape where the export has it as a constant. Where the counts or a shape disagree (the export
merged, dropped or reordered layers), no node is matched: a table without in-model timings is read as
before, never mismatched.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..forward import inference
from ..layers import is_weighted

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def module_calls(model: nn.Module, inputs, names: set[str]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, first input's shape) of each call of the modules named in ``names``, in call order."""
    calls: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: calls.append((name, tuple(a[0].shape))))
             for name, m in model.named_modules() if name in names]
    try:
        with inference(model, None):
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _fits(op: str, dims: tuple[int, ...] | None, weight: tuple[int, ...]) -> bool:
    if dims is None:
        return True   # computed in the graph: no shape to check
    if op in ("Gemm", "MatMul"):
        return sorted(dims) == sorted(weight)   # stored transposed or not
    return dims == weight


def _graph(path: str | os.PathLike):
    import onnx
    return onnx.load(os.fspath(Path(path)), load_external_data=False).graph


def _weighted_nodes(graph) -> list[tuple[object, tuple[int, ...] | None]]:
    """(node, its weight's shape where a constant) of each weighted node, in graph order."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        dims = shapes.get(node.input[1])
        if node.op_type == "MatMul" and dims is None:
            continue   # a product of two activations (attention), not a layer
        nodes.append((node, dims))
    return nodes


def onnx_modules(path: str | os.PathLike, model: nn.Module, inputs: tuple[torch.Tensor, ...]
                 ) -> list[tuple[str, str, str]]:
    """``(node name, first output name, module name)`` of each weighted node of the ONNX file at
    ``path`` (``model`` exported on ``inputs``); ``[]`` where the graph and the model's calls do not
    pair up (see the module's docstring)."""
    nodes = _weighted_nodes(_graph(path))
    weighted = {name for name, m in model.named_modules()
                if is_weighted(m) and isinstance(getattr(m, "weight", None), torch.Tensor)}
    calls = [(name, tuple(model.get_submodule(name).weight.shape))
             for name, _ in module_calls(model, inputs, weighted)]
    if len(nodes) != len(calls):
        return []
    if not all(_fits(node.op_type, dims, weight) for (node, dims), (_, weight) in zip(nodes, calls)):
        return []
    return [(node.name, node.output[0], name) for (node, _), (name, _) in zip(nodes, calls)]


def by_module(times: dict[str, float], pairs: list[tuple[str, str, str]]) -> dict[str, float]:
    """Per-node milliseconds (keyed by node or first output name) summed per module (all its calls)."""
    out: dict[str, float] = {}
    for node, output, module in pairs:
        t = times.get(node, times.get(output))
        if t is not None:
            out[module] = out.get(module, 0.0) + t
    return out


def fused_owners(path: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """The weighted ONNX node behind each of ``names``: the names a runtime gives the operations it
    ran after fusing the graph (ONNX Runtime names a conv fused with its BatchNorm, activation and
    residual Add by one of their output tensors, or keeps the node's name). From that node or the
    producer of that tensor, the graph is walked back over activations to the nearest weighted nodes;
    where more than one is reached (an Add of two branches), the ones other names own are ruled out,
    until one is left. A name that leads to no single weighted node is left out."""
    graph = _graph(path)
    consts = {t.name for t in graph.initializer}
    by_node = {n.name: n for n in graph.node}
    producer = {out: n for n in graph.node for out in n.output}
    weighted = {node.name for node, _ in _weighted_nodes(graph)}

    def reached(name: str) -> set[str]:
        start = by_node.get(name) or producer.get(name)
        found, todo, seen = set(), [start] if start is not None else [], set()
        while todo:
            node = todo.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.name in weighted:
                found.add(node.name)
                continue
            todo += [producer[i] for i in node.input if i in producer and i not in consts]
        return found

    candidates = {name: reached(name) for name in names}
    owners: dict[str, str] = {}
    while True:
        taken = set(owners.values())
        settled = {name: next(iter(left)) for name, c in candidates.items()
                   if name not in owners and len(left := c - taken) == 1}
        if not settled:
            return owners
        owners.update(settled)

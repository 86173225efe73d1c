"""The safety net: after surgery, the pruned model must run on the example inputs and give outputs
of the same structure and shapes as before, or the surgery raises instead of returning it."""
from __future__ import annotations

import torch
from torch import nn

from ..forward import ForwardFailure, eval_mode, map_tensors, signature, tracked_forward
from ..graph import Graph


class SurgeryError(RuntimeError):
    """The pruned model crashes or changed its outputs' structure: a case the engine did not prove."""


def _groups_touching(graph: Graph, module: str) -> str:
    found = [f"#{g.index}" for g in graph.groups if module in g.modules()]
    return f" (channel group {', '.join(found[:4])})" if found else ""


def _fits(got: tuple, want: tuple) -> bool:
    """Same path and shape; -1 in ``want`` (a size the data sets, as after NMS) matches any size."""
    (path, shape), (want_path, want_shape) = got, want
    if path != want_path or type(shape) is not type(want_shape):
        return False
    if not isinstance(shape, tuple):
        return shape == want_shape
    return len(shape) == len(want_shape) and all(w in (-1, s) for s, w in zip(shape, want_shape))


def verify(model: nn.Module, graph: Graph, changed: set[str]) -> None:
    """Run ``model`` (just pruned) on the graph's example inputs and compare output shapes."""
    if graph.example_inputs is None:
        return
    device = next((p.device for p in model.parameters()), None)
    inputs = map_tensors(lambda t: t.to(device), graph.example_inputs) if device is not None else graph.example_inputs
    try:
        with torch.no_grad(), eval_mode(model):
            out = tracked_forward(model, inputs)
    except ForwardFailure as f:
        cause = (str(f.cause).strip().splitlines() or [type(f.cause).__name__])[0]
        raise SurgeryError(f"internal: the pruned {type(model).__name__} fails{f.where()}"
                           f"{_groups_touching(graph, f.name)}: {cause}; the model was not returned "
                           f"(pass that layer in ignore=[...] to prune around it)") from f.cause
    got = signature(out)
    if len(got) != len(graph.outputs) or not all(_fits(a, b) for a, b in zip(got, graph.outputs)):
        diff = next(((a, b) for a, b in zip(got, graph.outputs) if not _fits(a, b)), (got[:1], graph.outputs[:1]))
        raise SurgeryError(f"internal: the pruned {type(model).__name__} returns {diff[0]} where it "
                           f"returned {diff[1]} (layers changed: {', '.join(sorted(changed)[:5])}); "
                           f"the model was not returned")

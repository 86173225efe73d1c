"""Peak inference memory of one forward pass, and the width (output channels) of every layer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from secateur.forward import as_inputs, checked_forward, inference, model_device
from secateur.layers import handler_for, is_weighted

__all__ = ["peak_memory", "weight_bytes", "widths"]

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each storage counted once (tied weights once)."""
    seen: dict[tuple[torch.device, int], int] = {}
    for t in (*model.parameters(), *model.buffers()):
        if t.numel() == 0:
            continue
        storage = t.untyped_storage()
        seen[(t.device, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def _walk(nodes) -> Iterator:
    for node in nodes:
        yield node
        yield from _walk(node.children)


@contextmanager
def _quiet_kineto() -> Iterator[None]:
    """Keep the profiler backend (kineto) from printing ``profiler_start``/``profiler_stop`` lines to
    stderr on every use: it reads ``KINETO_LOG_LEVEL`` once, when first started; 6 is above its
    highest level. A level the user set is respected, and the variable is restored afterwards."""
    if "KINETO_LOG_LEVEL" in os.environ:
        yield
        return
    os.environ["KINETO_LOG_LEVEL"] = "6"
    try:
        yield
    finally:
        os.environ.pop("KINETO_LOG_LEVEL", None)


def _tensors(value) -> Iterator[torch.Tensor]:
    """The tensors in a (nested) tuple, list or dict output."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _tensors(item)


def _allocation_peak(prof: profile, device: torch.device) -> tuple[int, int]:
    """``(peak, end)`` of the bytes allocated on ``device`` inside ``prof`` and not yet freed.

    Frees of blocks allocated before profiling started (e.g. garbage from earlier code) are ignored:
    a free only counts when its pointer was allocated inside the profile.
    """
    try:
        tree = prof.profiler.kineto_results.experimental_event_tree()
    except AttributeError as e:  # pragma: no cover - depends on the torch version
        raise RuntimeError(f"peak_memory: this torch ({torch.__version__}) profiler exposes no "
                           f"allocation events: {e}") from None
    events = [n for n in _walk(tree) if type(n.extra_fields).__name__ == "_ExtraFields_Allocation"]
    events.sort(key=lambda n: n.start_time_ns)  # stable: ties keep the tree's order
    live: dict[int, int] = {}
    current = peak = 0
    for node in events:
        fields = node.extra_fields
        if fields.device.type != device.type:
            continue
        if fields.alloc_size > 0:
            live[fields.ptr] = live.get(fields.ptr, 0) + fields.alloc_size
            current += fields.alloc_size
            peak = max(peak, current)
        elif fields.ptr in live:
            current -= live.pop(fields.ptr)
    return peak, current


def peak_memory(model: nn.Module, example_inputs: Inputs, *, threads: int | None = 1) -> dict:
    """Peak memory of one inference forward, split into weights and the largest live activations.

    Method: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free made by
    torch's allocator during one ``model(*example_inputs)`` (eval mode, ``no_grad``, after one warm-up
    forward). Walking those events in time order and keeping a running total of the bytes still
    allocated gives the peak of live memory the forward created: feature maps, the output, and the
    scratch buffers some kernels use (e.g. the im2col buffer of a CPU 3x3 conv). The weights exist
    before the forward, so they are not in that total; they are counted separately from the model's
    parameters and buffers. The inputs are live the whole time and are added to the activations.

    The kernels torch picks, and so their scratch memory, depend on the thread count: ``threads``
    (default 1, for a reproducible number; ``None`` keeps torch's) is set for the measurement only.

    Returns a dict of ints, all in bytes: ``weights_bytes``; ``input_bytes``; ``activation_bytes``
    (inputs + the peak of memory allocated during the forward and still live); ``output_bytes``;
    ``peak_bytes`` (weights + activations); and ``method`` (a string). The model is left as it was.
    Raises ``ValueError`` (one line) if the forward fails on these inputs.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"peak_memory: threads={threads!r} must be an int >= 1 or None")
    device = model_device(model)
    inputs = as_inputs(example_inputs, device)
    input_bytes = sum(x.untyped_storage().nbytes() for x in {x.untyped_storage().data_ptr(): x
                                                             for x in inputs}.values())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with inference(model, threads):
        checked_forward(model, inputs)  # warm-up, and a one-line error for inputs that do not fit
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        with _quiet_kineto(), profile(activities=activities, profile_memory=True) as prof:
            output = model(*inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    peak, _ = _allocation_peak(prof, device)
    weights = weight_bytes(model)
    return {"weights_bytes": weights, "input_bytes": input_bytes, "activation_bytes": input_bytes + peak,
            "output_bytes": sum(t.numel() * t.element_size() for t in _tensors(output)),
            "peak_bytes": weights + input_bytes + peak,
            "method": "torch.profiler(profile_memory=True), running total of allocations"}


def _width(module: nn.Module) -> int:
    return handler_for(module).io(module)[1]


def widths(model: nn.Module, example_inputs: Inputs | None = None) -> dict[str, int]:
    """Output channels of every conv layer and output features of every ``nn.Linear``, by module name.

    Without ``example_inputs`` the layers come in registration order (``named_modules``), which is the
    forward order for sequential models such as VGG; with them the model is run once (eval mode,
    ``no_grad``) and the layers come in the order they are first called, unused layers last.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"widths: model must be an nn.Module, got {type(model).__name__}")
    layers = {name: m for name, m in model.named_modules() if is_weighted(m)}
    if example_inputs is None:
        return {name: _width(m) for name, m in layers.items()}
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: order.append(name))
               for name, m in layers.items()]
    try:
        with inference(model, None):
            checked_forward(model, as_inputs(example_inputs, model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    ordered = list(dict.fromkeys(order)) + [n for n in layers if n not in set(order)]
    return {name: _width(layers[name]) for name in ordered}

"""One forward pass that knows where it failed: the innermost module running when it raised.

Shared plumbing (no secateur imports): ``checked_forward`` turns a shape error deep inside torch into
a one-line ``ValueError``; ``tracked_forward`` hands the failing module to the caller.
"""

from __future__ import annotations

import ctypes
import math
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

import torch
from torch import nn

from .layers import handler_for

__all__ = ["ForwardFailure", "checked_forward", "flat_tensors", "map_tensors", "shape_of", "signature",
           "tracked_forward"]

_FORWARD_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Context: ``model`` in eval mode; on exit every module gets back its own train/eval flag (a
    submodule the caller had frozen in eval mode stays so)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


Inputs = tuple[torch.Tensor, ...]


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of ``error``'s message (its type name when empty), cut to ``limit`` characters."""
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def time_forward(model: nn.Module, inputs: Inputs, *, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` timed ``model(*inputs)`` calls, after ``warmup`` untimed ones.

    The device is synchronised around every timed call when the inputs live on an accelerator; the C
    allocator keeps what the runs free while they are timed (:func:`kept_memory`).
    """
    sync = _synchronizer(inputs[0].device if inputs else torch.device("cpu"))
    with kept_memory():
        for _ in range(warmup):
            model(*inputs)
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(*inputs)
            sync()
            times.append(time.perf_counter() - start)
    return times


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # glibc's mallopt parameters
GLIBC_TRIM_THRESHOLD, GLIBC_MMAP_MAX = 128 * 1024, 65536   # their defaults
_keeping = False   # inside kept_memory


@cache
def _glibc():
    """The process's C library when it is glibc (whose ``mallopt`` tunes the allocator), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextmanager
def kept_memory() -> Iterator[None]:
    """Context: glibc's allocator keeps freed memory (no ``mmap`` for large blocks, no trimming), as a
    serving process's allocator does (jemalloc, tcmalloc: PyTorch's CPU tuning guide), and on exit
    returns it to the system with the defaults restored. With glibc's defaults PyTorch eager maps
    every large activation afresh on each run and the kernel zeroes it page by page: ResNet-50 at
    batch 16 took 330,000 page faults a run, a third of its CPU time (1.29 s a run, 0.64 s kept).
    Elsewhere (no glibc): nothing. One lasting effect: glibc stops adapting its mmap threshold once a
    parameter has been set."""
    global _keeping
    libc = _glibc()
    if libc is None or _keeping:   # not glibc, or already inside: the outermost context restores
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    _keeping = True
    try:
        yield
    finally:
        _keeping = False
        libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
        libc.malloc_trim(0)


@contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """``threads`` intra-op threads (``None``: as they are), the count restored on exit."""
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)


@contextmanager
def inference(model: nn.Module, threads: int | None) -> Iterator[None]:
    """Eval mode, ``no_grad`` and ``threads`` intra-op threads; every module's mode and the thread
    count are restored on exit."""
    with num_threads(threads), torch.no_grad(), eval_mode(model):
        yield


def as_inputs(example_inputs: torch.Tensor | tuple[torch.Tensor, ...], device: torch.device) -> Inputs:
    items = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)

    def moved(x):   # a tensor, or a list of them (a detector's images)
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, list) and x and all(isinstance(t, torch.Tensor) for t in x):
            return [t.to(device) for t in x]
        raise TypeError
    try:
        return tuple(moved(x) for x in items)
    except TypeError:
        kinds = ", ".join(type(x).__name__ for x in items)
        raise TypeError(f"example_inputs must be a Tensor, a tuple of Tensors or a list of image Tensors, "
                        f"got ({kinds})") from None


def with_batch(inputs: Inputs, batch: int) -> Inputs:
    """Inputs with ``batch`` rows, the example's rows repeated (or cut) along dim 0."""
    def resized(x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, list):   # a detector's list of images
            return [x[i % len(x)] for i in range(batch)]
        reps = math.ceil(batch / x.shape[0])
        return x.repeat(reps, *[1] * (x.dim() - 1))[:batch].contiguous()
    return tuple(resized(x) for x in inputs)


def scale_error(out, ref) -> tuple[float, float, float]:
    """``(rel, diff, scale)`` of two same-shaped arrays: ``diff = max|out - ref|``, ``scale = max|ref|``
    and ``rel = diff / scale`` (0 when both are 0), the error relative to the output's scale (elementwise
    ratios blow up on values near 0)."""
    import numpy as np
    o, r = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    diff, scale = float(np.abs(o - r).max(initial=0.0)), float(np.abs(r).max(initial=0.0))
    return (diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))), diff, scale


def model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def shape_of(x: Any) -> str:
    """``(1, 3, 32, 32)`` for a tensor, the type name otherwise."""
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _expected(module: nn.Module, got: torch.Size) -> tuple[int, ...] | None:
    """The input shape ``module`` wants, derived from the shape it ``got`` (its layer handler says);
    ``None`` if unknown."""
    handler = handler_for(module)
    return None if handler is None else handler.expects(module, tuple(got))


def _where(name: str, module: nn.Module, args: Sequence[Any]) -> str:
    """`` in 'layer1.0.conv1' (Conv2d), which got (..) but expects (..)``: where the forward failed."""
    label = f"'{name}'" if name else "the model's own forward"
    text = f" in {label} ({type(module).__name__})"
    first = args[0] if args else None
    if isinstance(first, torch.Tensor):
        text += f", which got {shape_of(first)}"
        if (want := _expected(module, first.shape)) is not None and want != tuple(first.shape):
            text += f" but expects {want}"
    return text


def flat_tensors(value) -> list[torch.Tensor]:
    """Every tensor in a (nested) tuple, list or dict, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flat_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flat_tensors(v)]
    return []


def map_tensors(fn, value):
    """``value`` with ``fn`` applied to every tensor in it (tuples, lists and dicts keep their types)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    return value


def signature(value, path: str = "output") -> list[tuple[str, object]]:
    """A model output's structure, each tensor replaced by its shape: [(path, shape or type name)]."""
    if isinstance(value, torch.Tensor):
        return [(path, tuple(value.shape))]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in signature(v, f"{path}[{k!r}]")]
    if isinstance(value, (tuple, list)):
        return [s for i, v in enumerate(value) for s in signature(v, f"{path}[{i}]")]
    return [(path, type(value).__name__)]


class ForwardFailure(Exception):
    """``model(*inputs)`` raised inside module ``name`` (``''``: the model's own forward)."""

    def __init__(self, name: str, module: nn.Module, args: tuple, cause: BaseException):
        super().__init__(name, cause)
        self.name, self.module, self.args, self.cause = name, module, args, cause

    def where(self) -> str:
        return _where(self.name, self.module, self.args)


def tracked_forward(model: nn.Module, inputs: tuple) -> Any:
    """Run ``model(*inputs)``; if it raises one of the usual forward errors, raise
    :class:`ForwardFailure` naming the innermost module that was running."""
    stack: list[tuple[str, nn.Module, tuple[Any, ...]]] = []

    def enter(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        stack.append((name, module, args))

    def leave(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        stack.pop()  # hooks must return None, or they replace the output

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda m, args, name=name: enter(name, m, args)))
        handles.append(module.register_forward_hook(leave))
    try:
        return model(*inputs)
    except _FORWARD_ERRORS as e:
        name, module, args = stack[-1] if stack else ("", model, inputs)
        raise ForwardFailure(name, module, args, e) from e
    finally:
        for handle in handles:
            handle.remove()


def checked_forward(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """Run ``model(*inputs)``; if it raises, raise a one-line ``ValueError`` naming the input shapes
    and the innermost module that failed, chained to the original error."""
    try:
        return tracked_forward(model, inputs)
    except ForwardFailure as f:
        where = f.where()
        cause = (str(f.cause).strip().splitlines() or [type(f.cause).__name__])[0]
        given = ", ".join(shape_of(x) for x in inputs)
        raise ValueError(f"example input of shape {given} does not fit the model: the forward failed"
                         f"{where}: {cause}") from f.cause

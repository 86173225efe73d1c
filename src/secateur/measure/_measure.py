"""measure(model, inputs): parameters, MACs, latency and file size, without changing the model."""

from __future__ import annotations

import copy
import os
import statistics
import warnings

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from secateur.io import serialized_size
from secateur.forward import Inputs, as_inputs, checked_forward, inference, model_device, time_forward, with_batch
from secateur.measure.stats import Stats

__all__ = ["count_macs", "count_params", "measure", "time_forward"]



def count_params(model: nn.Module) -> int:
    """Parameter elements; a parameter shared by several modules is counted once."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, inputs: Inputs | torch.Tensor) -> int:
    """MACs of one ``model(*inputs)``: ``torch.utils.flop_counter.FlopCounterMode`` FLOPs ÷ 2.

    Counts the matmul-like ops torch knows (convolutions, linear, matmul, attention); elementwise
    ops such as BN, activations and adds are not counted. Run it under eval and ``no_grad``.
    """
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    with FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops() // 2


def macs_by_module(model: nn.Module, inputs: Inputs | torch.Tensor) -> dict[str, int]:
    """MACs of one ``model(*inputs)`` per module name (its submodules' included; ``""`` is the whole
    model), from the same counter as :func:`count_macs`. Run it under eval and ``no_grad``."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    with FlopCounterMode(display=False) as counter:
        model(*inputs)
    flops, root = counter.get_flop_counts(), type(model).__name__
    return {name: sum(flops.get(f"{root}.{name}" if name else root, {}).values()) // 2
            for name, _ in model.named_modules()}


_warned_wait_policy = False


def _check_wait_policy(threads: int, device: torch.device) -> None:
    """Warn once per process when CPU latency is timed on several threads while OpenMP threads may
    spin (``OMP_WAIT_POLICY`` not PASSIVE); the policy is read when torch loads, so only warn."""
    global _warned_wait_policy
    if (_warned_wait_policy or threads <= 1 or device.type != "cpu"
            or os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"):
        return
    _warned_wait_policy = True
    warnings.warn(f"secateur.measure: timing latency on {threads} threads without OMP_WAIT_POLICY=PASSIVE; "
                  f"spinning OpenMP threads can distort it: set OMP_WAIT_POLICY=PASSIVE in the environment "
                  f"before importing torch (or pass threads=1)", RuntimeWarning, stacklevel=3)


def _latency(model: nn.Module, inputs: Inputs, *, repeats: int, warmup: int,
             channels_last: bool) -> tuple[float, float]:
    """Median and interquartile range of the forward time, in milliseconds."""
    if channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
                       for x in inputs)
    times_ms = [1e3 * t for t in time_forward(model, inputs, repeats=repeats, warmup=warmup)]
    if len(times_ms) < 2:
        return times_ms[0], 0.0
    p25, median, p75 = statistics.quantiles(times_ms, n=4, method="inclusive")
    return median, p75 - p25


def measure(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    latency: bool = True,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    channels_last: bool = False,
    batch: int | None = None,
) -> Stats:
    """Parameters, MACs, latency and safetensors size of ``model`` on ``example_inputs``.

    Runs in eval mode under ``torch.no_grad()`` on the model's device (inputs are moved there).
    MACs are counted on ``example_inputs`` as given; ``batch`` (if set) resizes dim 0 of the inputs
    for the latency runs only. Latency is the median of ``repeats`` timed runs after ``warmup``
    untimed ones, with the interquartile range as spread; ``threads`` sets ``torch.set_num_threads``
    for the measurement, ``channels_last`` times a channels-last copy. The model is left as it was:
    same training flags, memory format and thread count. Timing on the CPU with more than one thread
    warns (once) unless ``OMP_WAIT_POLICY=PASSIVE`` was set before torch was imported.

    Raises ``ValueError`` (one line) when the forward fails on these inputs, e.g. a wrong shape.
    """
    if repeats < 1 or warmup < 0 or any(v is not None and v < 1 for v in (batch, threads)):
        raise ValueError(f"need repeats >= 1, warmup >= 0, batch and threads >= 1 or None; got "
                         f"repeats={repeats}, warmup={warmup}, batch={batch}, threads={threads}")
    inputs = as_inputs(example_inputs, model_device(model))
    with inference(model, threads):
        checked_forward(model, inputs)
        macs = count_macs(model, inputs)
        median = spread = None
        if latency:
            _check_wait_policy(torch.get_num_threads(), inputs[0].device if inputs else torch.device("cpu"))
            timed = inputs if batch is None else with_batch(inputs, batch)
            median, spread = _latency(model, timed, repeats=repeats, warmup=warmup,
                                      channels_last=channels_last)
    return Stats(params=count_params(model), macs=macs, latency_ms=median,
                 latency_spread_ms=spread, bytes=serialized_size(model))

"""The runtime interface: export a model, load it, run it on numpy arrays, time one input.

A backend is one small class registered by name. ``prepare(model, x, runtime)`` exports and loads it
and checks its outputs against PyTorch on ``x`` before anything is timed; a backend whose package is
missing is a one-line :class:`RuntimeMissing` naming the extra to install, raised before any work.
"""
from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..forward import as_inputs, checked_forward, flat_tensors, inference, scale_error, time_forward

Runner = Callable[[list[np.ndarray]], list[np.ndarray]]
DISTURBED, RETRIES, PAUSE = 1.15, 3, 1.0   # ratios_to: a session this much slower than the fastest is
                                            # measured again, at most RETRIES times, PAUSE seconds apart
ROUND_MS = 5000.0   # ratios_to: a long model's round asks fewer than 10 runs (3 at least) past this many ms


log = logging.getLogger(__name__)   # ratios_to: one line a session (INFO), to see retries and session spread


class RuntimeMissing(ValueError):
    """The runtime's package is not installed (or does not import)."""


class RuntimeMismatch(ValueError):
    """The runtime computes something else than PyTorch on the example inputs."""


class Backend:
    """One runtime. ``modules``: what must import; ``extra``: the pip extra that installs them;
    ``exports``: it runs an exported file (a deployment runtime), not the module itself; ``timing``:
    a change in how its runs are timed, part of its latency tables' cache key (so they re-measure)."""

    name: str = ""
    extra: str = "runtimes"
    exports: bool = False
    modules: tuple[str, ...] = ()
    timing: str = ""

    def require(self) -> None:
        for module in self.modules:
            try:
                with quiet():
                    importlib.import_module(module)
            except ImportError as e:
                raise RuntimeMissing(f"runtime {self.name!r} needs {module}, which does not import ({e}): "
                                     f"pip install 'secateur[{self.extra}]'") from None

    def load(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], folder: Path, threads: int) -> Runner:
        raise NotImplementedError

    def latency(self, prepared: Prepared, repeats: int, warmup: int) -> float:
        """Median milliseconds of one run of ``prepared`` on its example inputs (wall clock)."""
        arrays = prepared.arrays
        return median_ms(lambda: prepared.run(arrays), repeats, warmup)

    def kernels(self, prepared: Prepared, folder: Path, threads: int, repeats: int) -> float:
        """Median milliseconds of ``prepared``'s own operations (its exports in ``folder``), without
        converting its inputs and outputs between PyTorch's layout and the runtime's: a layer timed
        alone pays those conversions, which inside a model happen once (OpenVINO, 2 threads: 11 of a
        lone 3x3 conv's 20 ms, 64 channels at 224 px, go to converting its output). The default: the run.
        A backend that overrides it has tables of its own (a cache key of their own)."""
        return prepared.latency(repeats=repeats, warmup=0)

    def layer_times(self, prepared: Prepared, folder: Path, threads: int, repeats: int) -> dict[str, float]:
        """Median milliseconds of each weighted module of ``prepared.model`` inside the whole model, by
        module name, from the runtime's own per-operation profile; ``{}`` where it has none (the
        default). A layer fused with its neighbours, or run by another algorithm than alone, costs
        something else inside the model than alone: the latency tables weigh each layer by this."""
        return {}


@contextlib.contextmanager
def quiet():
    """Send what native code prints to standard output (MNN's CPU feature line) to /dev/null, so that
    a command's output stays its own."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    return backend


def backends() -> dict[str, Backend]:
    """Every known runtime, by name (installed or not)."""
    return dict(_BACKENDS)


def installed(*, exports: bool = False) -> list[str]:
    """The runtimes whose packages import here (``exports``: only those that run an exported file)."""
    out = []
    for name, b in _BACKENDS.items():
        if exports and not b.exports:
            continue
        try:
            b.require()
        except RuntimeMissing:
            continue
        out.append(name)
    return out


def backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ValueError(f"runtime={name!r}; choose one of {', '.join(_BACKENDS)}")
    b = _BACKENDS[name]
    b.require()
    return b


@dataclass
class Prepared:
    """A model loaded in a runtime, checked against PyTorch: ``run(arrays)`` and ``latency()``."""

    runtime: str
    run: Runner
    arrays: list[np.ndarray]
    error: float            # the largest output difference from PyTorch, relative to the output's scale
    model: nn.Module        # what was exported (the caller's model; not changed)
    files: object = None    # removes the temporary folder holding the exports with this object

    def latency(self, *, repeats: int = 20, warmup: int = 5) -> float:
        """Median milliseconds of one run on the example inputs."""
        if repeats < 1 or warmup < 0:
            raise ValueError(f"need repeats >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
        return _BACKENDS[self.runtime].latency(self, repeats, warmup)


def prepare(model: nn.Module, example_inputs, runtime: str = "torch", *, threads: int = 1,
            folder: str | Path | None = None, rtol: float = 1e-3) -> Prepared:
    """Export ``model`` to ``runtime`` (files in ``folder``, one folder per model, shared by its runtimes;
    a temporary directory by default), load it on
    ``threads`` CPU threads and check it computes what PyTorch does on ``example_inputs`` (largest
    difference ``<= rtol`` times the output's scale): :class:`RuntimeMismatch` otherwise. The model is
    left as it was."""
    b = backend(runtime)
    if threads < 1:
        raise ValueError(f"threads={threads!r} must be >= 1")
    inputs = as_inputs(example_inputs, torch.device("cpu"))
    with inference(model, None):
        refs = [t.detach().double().numpy() for t in flat_tensors(checked_forward(model, inputs))]
    work = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix=f"secateur-{runtime}-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run = b.load(model, inputs, work, threads)
        arrays = [t.detach().float().numpy() for t in inputs]
        prepared = Prepared(runtime, run, arrays, agree(run(arrays), refs, f"runtime {runtime!r}", rtol), model)
    except BaseException:
        if folder is None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if folder is None:   # our temporary folder goes with the object, quietly (no ResourceWarning)
        prepared.files = weakref.finalize(prepared, shutil.rmtree, work, ignore_errors=True)
    return prepared


def agree(outs: list, refs: list[np.ndarray], where: str, rtol: float) -> float:
    """The largest ``max|out - ref| / max|ref|`` over the outputs; RuntimeMismatch past ``rtol``."""
    if len(outs) != len(refs):
        raise RuntimeMismatch(f"{where}: {len(outs)} output(s) where PyTorch gives {len(refs)}")
    worst = 0.0
    for i, (out, ref) in enumerate(zip(outs, refs)):
        o = np.asarray(out, dtype=np.float64)
        if o.size == ref.size and o.shape != ref.shape:
            o = o.reshape(ref.shape)   # runtimes that drop or add unit dims
        if o.shape != ref.shape:
            raise RuntimeMismatch(f"{where}: output {i} has shape {o.shape} where PyTorch gives {ref.shape}")
        rel = scale_error(o, ref)[0]
        if not rel <= rtol:
            raise RuntimeMismatch(f"{where}: output {i} differs from PyTorch by {rel:.3g} of its scale "
                                  f"(allowed {rtol:g}); this runtime cannot run the model faithfully")
        worst = max(worst, rel)
    return worst


def ratio_to(model: nn.Module, example_inputs, runtime: str = "torch", *, threads: int = 1, rounds: int = 6,
             seconds: float = 0.25, sessions: int = 1):
    """A function giving a model's latency relative to ``model``'s on ``runtime``: both timed in
    ``rounds`` alternating rounds, the medians compared, so that a machine's drift cancels. A round
    times each model for about ``seconds`` (at least 10 runs; 3 or more where 10 take over
    ``ROUND_MS``), so that milliseconds-long models are
    timed as steadily as long ones; ``sessions``: see :func:`ratios_to`."""
    many = ratios_to(model, example_inputs, runtime, threads=threads, rounds=rounds, seconds=seconds,
                     sessions=sessions)
    return lambda small: many([small])[0]


def ratios_to(model: nn.Module, example_inputs, runtime: str = "torch", *, threads: int = 1, rounds: int = 6,
              seconds: float = 0.25, sessions: int = 1):
    """Like :func:`ratio_to` for several models at once: the function takes a list of models and
    times them all in the same alternating rounds with ``model``, so that they are compared with each
    other under the same conditions; it returns their ratios in order. Each call loads every model,
    ``model`` included, in fresh runtime sessions (one export each): a session's own speed (where its
    buffers and threads landed) moves a small model's batch-1 time by up to 10 %, and one session of
    ``model`` kept across calls would bias every ratio alike. ``sessions`` > 1: the median ratio over
    that many independent loads of every model.

    A session in which ``model`` runs more than ``DISTURBED`` times slower than in the fastest session
    so far was timed on a disturbed machine (a shared host's episodes of a few seconds: ONNX Runtime at
    batch 1 then ran ResNet-56 30 % slower and its pruned copy twice as slow, reading 0.9 where it
    reads 0.58): it is measured again, ``PAUSE`` seconds later, ``RETRIES`` extra sessions a call at
    most; the ``sessions`` least disturbed are kept, with a warning if they still were."""
    if sessions < 1:
        raise ValueError(f"sessions={sessions!r} must be >= 1")
    home = Path(tempfile.mkdtemp(prefix=f"secateur-{runtime}-"))   # the exports, one folder a model
    try:
        base = prepare(model, example_inputs, runtime, threads=threads, folder=home / "base")
        repeats = repeats_for(base, seconds * 1e3, least=10, most=500, probe=5, least_ms=ROUND_MS)
        fastest = base.latency(repeats=repeats, warmup=0)   # the whole model's fastest median so far
        del base
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    calls = itertools.count()

    def ratios(smalls: list[nn.Module]) -> list[float]:
        nonlocal fastest
        folders = [home / f"{next(calls)}" for _ in smalls]
        try:
            timed = []   # (the whole model's median, the ratios) of each session
            for attempt in range(sessions + RETRIES):
                if attempt >= sessions:
                    time.sleep(PAUSE)
                loaded = [prepare(m, example_inputs, runtime, threads=threads, folder=f)
                          for m, f in zip([*smalls, model], [*folders, home / "base"])]
                *cut, whole = alternating(loaded, repeats, rounds)
                del loaded
                fastest = min(fastest, whole)
                timed.append((whole, [c / whole for c in cut]))
                log.info("%s: session %d: the original %.1f ms (%.3fx its fastest), ratios %s", runtime, attempt,
                         whole, whole / fastest, " ".join(f"{r:.3f}" for r in timed[-1][1]))
                if len(timed) >= sessions and sum(w <= DISTURBED * fastest for w, _ in timed) >= sessions:
                    break
            kept = sorted(timed, key=lambda t: t[0])[:sessions]
            if kept[-1][0] > DISTURBED * fastest:
                warnings.warn(f"{runtime}: the model ran {kept[-1][0] / fastest:.2f}x slower than its fastest "
                              f"in {len(timed)} sessions: the machine is busy, so the ratios may be off; time on "
                              "an idle machine", stacklevel=3)
            return [statistics.median(r) for r in zip(*(r for _, r in kept))]
        finally:
            for f in folders:
                shutil.rmtree(f, ignore_errors=True)
    weakref.finalize(ratios, shutil.rmtree, home, ignore_errors=True)
    return ratios


def median_ms(run: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median milliseconds of ``repeats`` timed calls of ``run``, after ``warmup`` untimed ones."""
    return 1e3 * statistics.median(time_forward(lambda *_: run(), (), repeats=repeats, warmup=warmup))


def repeats_for(prepared: Prepared, ms: float, *, least: int, most: int, probe: int,
                least_ms: float | None = None) -> int:
    """How many runs of ``prepared`` fill about ``ms`` milliseconds, from a ``probe``-run timing (after
    2 warm-up runs), kept in [least, most]: a milliseconds-long model is timed as steadily as a long one.
    ``least_ms``: ``least`` is lowered (never below 3) where that many runs would take longer than this,
    since a run of seconds varies by a few percent at most (VGG-16-BN at batch 16 on 2 threads takes
    1.2-1.8 s: 10 runs a round made one timing call 2 minutes long, and a latency-targeted prune hours)."""
    first = max(prepared.latency(repeats=probe, warmup=2), 1e-3)
    if least_ms is not None:
        least = min(least, max(3, math.ceil(least_ms / first)))
    return max(least, min(most, math.ceil(ms / first)))


def alternating(prepared: list, repeats: int, rounds: int) -> list[float]:
    """Median latency of each prepared model, timed in ``rounds`` rounds that take the models in
    turn (``repeats`` runs each), so that a machine's drift falls on all of them alike."""
    times = [[p.latency(repeats=repeats, warmup=2) for p in prepared] for _ in range(rounds)]
    return [statistics.median(t[i] for t in times) for i in range(len(prepared))]


def measured_ratio(model: nn.Module, small: nn.Module, example_inputs, runtime: str = "torch", *,
                   threads: int = 1) -> float:
    """``small``'s latency relative to ``model``'s on ``runtime`` (see :func:`ratio_to`)."""
    return ratio_to(model, example_inputs, runtime, threads=threads)(small)

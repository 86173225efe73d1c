"""Shared by the benchmark scripts: machine facts, result rows and files, tables, interleaved timing.

Results follow /work/shared/BENCHMARKS.md: one ``benchmarks/results/NAME.json`` per run holding
``{"benchmark", "command", "date", "machine", "rows"}``; each row carries the standard fields
(defaults from :func:`row`) plus whatever extras a benchmark needs.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from secateur.forward import kept_memory

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2

_STANDARD = {"model": None, "tool": None, "method": None, "target": None, "macs_ratio": None,
             "params_ratio": None, "latency_ratio": None, "batch": None, "acc_base": None,
             "acc_pruned": None, "acc_finetuned": None, "finetune_epochs": 0, "seed": 0,
             "ok": True, "error": None}


def setup(threads: int = THREADS) -> None:
    """Fixed intra-op threads for every timing in the run."""
    torch.set_num_threads(threads)


def machine() -> dict:
    from secateur.runtimes import cpu_name
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": "cpu",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average": [round(v, 2) for v in os.getloadavg()]}
    # the installed distributions, imported or not (rows read from the cache import none of them);
    # torch_pruning 1.6.1 says "1.6.0" itself
    for name in ("torchvision", "torch-pruning", "onnxruntime"):
        try:
            info[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def row(**fields) -> dict:
    """A result row: the standard fields (defaults filled in) followed by any extras."""
    extras = {k: v for k, v in fields.items() if k not in _STANDARD}
    return {**{k: fields.get(k, v) for k, v in _STANDARD.items()}, **extras}


def error_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}".strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def write_results(name: str, rows: list[dict], argv: Sequence[str], keep_others: bool = False) -> Path:
    """Write ``results/NAME.json`` atomically (temp file + rename); return its path. ``keep_others``
    (a run of part of a benchmark): the earlier file's rows that this run did not measure again, by
    (experiment, model, target, tool, method, batch), are kept ahead of the new ones, each with the command
    and date that made it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    if keep_others and path.exists():
        old = json.loads(path.read_text())
        def key(r: dict) -> tuple:
            return r.get("experiment"), r["model"], json.dumps(r.get("target")), r["tool"], r["method"], r.get("batch")
        ran = {key(r) for r in rows}
        rows = [{**r, "command": r.get("command", old["command"]), "date": r.get("date", old["date"])}
                for r in old["rows"] if key(r) not in ran] + rows
    doc = {"benchmark": name.removesuffix("_quick"),
           "command": " ".join(["python", f"benchmarks/{Path(argv[0]).name}", *argv[1:]]),
           "date": datetime.date.today().isoformat(), "machine": machine(), "rows": rows}
    return dump_json(path, doc, indent=1)


def dump_json(path: Path, obj, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (temp file in the same folder + rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=indent, default=_jsonable)
        f.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes it 0600: results are for everyone to read
    os.replace(tmp, path)
    return path


def stage_rows(path: Path | None, make: Callable[[], list[dict]]) -> list[dict]:
    """The rows of one finished stage of a long run: kept in ``path`` (JSON) so that a rerun after an
    interruption skips the stage; delete the file to measure again. ``path=None``: no keeping."""
    if path is not None and path.exists():
        rows = json.loads(path.read_text())
        print(f"(rows of {path.name} kept from an earlier run; delete it to measure again)", flush=True)
        return rows
    rows = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        dump_json(path, rows)
    return rows


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_table(rows: Sequence[Mapping], columns: Sequence[tuple[str, str | Callable]],
                title: str | None = None) -> None:
    """Print ``rows`` as an aligned text table; a column is ``(header, key or row -> value)``."""
    cells = [[fmt(c(r) if callable(c) else r.get(c)) for _, c in columns] for r in rows]
    heads = [h for h, _ in columns]
    widths = [max([len(h)] + [len(line[i]) for line in cells]) for i, h in enumerate(heads)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(heads, widths)))
    print("  ".join("-" * w for w in widths))
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    sys.stdout.flush()


def median_spread(values: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range (p75 - p25)."""
    if len(values) < 2:
        return values[0], 0.0
    p25, median, p75 = statistics.quantiles(values, n=4, method="inclusive")
    return median, p75 - p25


def paired_bootstrap(a, b, *, resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` (per-item scores of two models on the same items) and its 95 % percentile
    interval from ``resamples`` bootstrap resamples of the items. ``a`` or ``b`` may hold one row of
    scores per training seed: each resample then also draws that side's seeds with replacement, so
    that the interval covers how much a training run itself moves the result, not only which test
    items were drawn (a side with one seed contributes none of that variation)."""
    import numpy as np
    a, b = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (a, b))
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(0, resamples, 500):   # 500 resamples at a time: memory stays small
        n = min(500, resamples - i)
        items = rng.integers(0, a.shape[1], (n, a.shape[1]))
        sides = []
        for s in (a, b):
            per_seed = np.stack([row[items].mean(axis=1) for row in s], axis=1)   # (resamples, seeds)
            if len(s) > 1:
                per_seed = np.take_along_axis(per_seed, rng.integers(0, len(s), (n, len(s))), axis=1)
            sides.append(per_seed.mean(axis=1))
        means[i:i + n] = sides[0] - sides[1]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def dense(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU, eval, contiguous-format copy: fit leaves weights channels_last, which alone moves CPU
    latency by ~25% and is not what an export or a fresh load sees; compare models in this form."""
    import copy
    return copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()


def pair_latency(base: torch.nn.Module, small: torch.nn.Module, x: torch.Tensor, *, threads: int | None = None,
                 repeats: int = 10) -> dict[str, tuple[float, float]]:
    """(median, IQR) ms of dense copies of ``base`` ("b") and ``small`` ("s") on ``x``, timed interleaved,
    with ``threads`` intra-op threads for the duration (default: as set)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads or old)
    try:
        return interleaved_latency({"b": dense(base), "s": dense(small)}, x, repeats=repeats, warmup=2)
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def interleaved_latency(models: Mapping[str, torch.nn.Module], x: torch.Tensor, *, repeats: int,
                        warmup: int) -> dict[str, tuple[float, float]]:
    """Forward time in ms (median, IQR) of each model on ``x``, eval mode, no_grad.

    Every model gets ``warmup`` untimed runs, then ``repeats`` rounds time each model once, in an
    order rotated each round, so a change in machine load hits all models alike. Timed in
    ``secateur.forward.kept_memory``, as secateur's own timings are (glibc would map every large
    activation afresh each run: ResNet-50 at batch 16 spent half its time in page faults).
    """
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    with kept_memory():
        for name in names:
            models[name].eval()
            for _ in range(warmup):
                models[name](x)
        for r in range(repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.perf_counter()
                models[name](x)
                times[name].append(1e3 * (time.perf_counter() - start))
    return {n: median_spread(t) for n, t in times.items()}

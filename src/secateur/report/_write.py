"""``write_report``: a before/after pruning report (markdown table, PNG figures, raw numbers in JSON)."""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from secateur.io import atomic_dir
from secateur.measure import measure
from secateur.forward import as_inputs, model_device, with_batch
from secateur.measure.stats import byte_size, si_count
from secateur.report._memory import peak_memory, widths
from secateur.report._plots import plot_acc_vs_macs, plot_finetune, plot_gammas, plot_widths

__all__ = ["write_report"]


def _check(value, kinds, what: str, *, optional: bool = True):
    if (value is None and optional) or isinstance(value, kinds):
        return value
    names = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
    raise TypeError(f"write_report: {what} must be {names}{' or None' if optional else ''}, "
                    f"got {type(value).__name__}")


def _finite(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"write_report: {what} must be a finite number, got {value!r}")
    return float(value)


def _validate(records, history, accuracy, onnx) -> None:
    if records is not None:
        _check(records, (list, tuple), "records")
        for i, r in enumerate(records):
            if not isinstance(r, Mapping) or "stage" not in r:
                raise ValueError(f"write_report: records[{i}] is not a dict with a 'stage'")
    if history is not None:
        _check(history, (list, tuple), "history")
        if not history:
            raise ValueError("write_report: history is empty; pass None for no fine-tuning curve")
    if accuracy is not None:
        _check(accuracy, Mapping, "accuracy")
        if set(accuracy) != {"before", "after"}:
            raise ValueError(f"write_report: accuracy needs exactly the keys 'before' and 'after', "
                             f"got {sorted(map(str, accuracy))}")
        for k in ("before", "after"):
            _finite(accuracy[k], f"accuracy[{k!r}]")
    if onnx is not None:
        _check(onnx, Mapping, "onnx")
        for name, pair in onnx.items():
            if not isinstance(name, str) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(f"write_report: onnx[{name!r}] must be a (before, after) pair keyed by a "
                                 f"row title")
            _finite(pair[0], f"onnx[{name!r}] before")
            _finite(pair[1], f"onnx[{name!r}] after")


def _cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when it lives on the CPU, else a CPU copy (the caller's model is not moved)."""
    return model if model_device(model).type == "cpu" else copy.deepcopy(model).cpu()


def _ratio(after: float | None, before: float | None) -> str:
    if after is None or before is None or not before:
        return "-"
    return f"{after / before:.2f}x"


def _ms(median: float | None, spread: float | None) -> str:
    return "-" if median is None else f"{median:.3g} ± {spread or 0:.2g}"


def _acc(v: float, percent: bool) -> str:
    return f"{100 * v:.2f}%" if percent else f"{v:.4g}"


def _label(r: Mapping) -> str:
    parts = [str(r["stage"])]
    if "pass" in r:
        parts.append(f"p{r['pass']}")
    if "round" in r:
        parts.append(f"r{r['round']}")
    if "layer" in r:
        parts.append(str(r["layer"]))
    return " ".join(parts)


def _measurements(model: nn.Module, x1: tuple[torch.Tensor, ...], batches: Sequence[int], repeats: int,
                  threads: int | None) -> dict:
    out: dict = {}
    for b in batches:
        stats = measure(model, x1, batch=b, repeats=repeats, warmup=max(1, repeats // 3), threads=threads)
        mem = peak_memory(model, with_batch(x1, b))
        out.update({"params": stats.params, "macs": stats.macs, "bytes": stats.bytes,
                    "weights_bytes": mem["weights_bytes"],
                    f"latency_ms_b{b}": stats.latency_ms, f"latency_spread_ms_b{b}": stats.latency_spread_ms,
                    f"peak_bytes_b{b}": mem["peak_bytes"], f"activation_bytes_b{b}": mem["activation_bytes"]})
    return out


def _alternate(pairs, x1: tuple[torch.Tensor, ...], batches: Sequence[int], repeats: int, threads: int | None,
               rounds: int = 3) -> None:
    """Time the models again in ``rounds`` rounds that alternate between them, and keep for each the
    median over all rounds: a machine's drift then hits both alike (one round of a millisecond-long
    model moves by 10-20 % on a shared machine)."""
    seen = {id(m): [[m[f"latency_ms_b{b}"]] for b in batches] for _, m in pairs}
    for _ in range(rounds - 1):
        for model, m in pairs:
            for i, b in enumerate(batches):
                stats = measure(model, x1, batch=b, repeats=repeats, warmup=max(1, repeats // 3), threads=threads)
                seen[id(m)][i].append(stats.latency_ms)
    for _, m in pairs:
        for i, b in enumerate(batches):
            m[f"latency_ms_b{b}"] = statistics.median(seen[id(m)][i])


def _table(m0: dict, m1: dict, batches: Sequence[int], accuracy, onnx) -> list[tuple[str, str, str, str]]:
    rows = [("Parameters", si_count(m0["params"]), si_count(m1["params"]), _ratio(m1["params"], m0["params"])),
            ("MACs per image", si_count(m0["macs"]), si_count(m1["macs"]), _ratio(m1["macs"], m0["macs"]))]
    for b in batches:
        key, spread = f"latency_ms_b{b}", f"latency_spread_ms_b{b}"
        rows.append((f"CPU latency, batch {b} (ms)", _ms(m0[key], m0[spread]), _ms(m1[key], m1[spread]),
                     _ratio(m1[key], m0[key])))
    rows.append(("File size (safetensors)", byte_size(m0["bytes"]), byte_size(m1["bytes"]), _ratio(m1["bytes"], m0["bytes"])))
    for b in batches:
        for key, title in ((f"peak_bytes_b{b}", f"Peak inference memory, batch {b}"),
                           (f"activation_bytes_b{b}", f"of which activations, batch {b}")):
            rows.append((title, byte_size(m0[key]), byte_size(m1[key]), _ratio(m1[key], m0[key])))
    if accuracy is not None:
        a0, a1 = float(accuracy["before"]), float(accuracy["after"])
        percent = max(a0, a1) <= 1
        delta = f"{100 * (a1 - a0):+.2f} pp" if percent else f"{a1 - a0:+.4g}"
        rows.append(("Accuracy", _acc(a0, percent), _acc(a1, percent), delta))
    for name, (v0, v1) in (onnx or {}).items():
        rows.append((name, f"{v0:.4g}", f"{v1:.4g}", _ratio(float(v1), float(v0))))
    return rows


def _figures(tmp: Path, before_w, after_w, records, history) -> list[tuple[str, str]]:
    """Draw the figures that apply into ``tmp``; return (file name, caption) pairs."""
    kept, total = sum(after_w.values()), sum(before_w.values())
    figures = [(plot_widths(before_w, after_w, tmp / "widths.png").name,
                f"Output channels of each conv/linear layer in forward order, before (grey) and after (blue) "
                f"pruning: {kept} of {total} kept.")]
    records = list(records or [])
    gammas = {_label(r): (g.detach().flatten().tolist() if isinstance(g, torch.Tensor) else list(g))
              for r in records if (g := r.get("gammas")) is not None and len(g)}
    if gammas:
        figures.append((plot_gammas(gammas, tmp / "gammas.png").name,
                        "Histogram of BatchNorm γ (log counts) per recorded stage; sparsity training pushes "
                        "them towards zero."))
    scored = [r for r in records if r.get("acc") is not None and r.get("macs")]
    if scored:
        base = next((r for r in records if r["stage"] == "baseline" and r.get("macs")), scored[0])
        points = [{"label": _label(r), "macs_ratio": r["macs"] / base["macs"], "acc": r["acc"]} for r in scored]
        figures.append((plot_acc_vs_macs(points, tmp / "acc_vs_macs.png", baseline_acc=base.get("acc")).name,
                        "Accuracy against the fraction of the baseline's MACs kept, one point per recorded "
                        "stage; the dashed line is the baseline accuracy."))
    if history:
        figures.append((plot_finetune(history, tmp / "finetune.png").name,
                        "Fine-tuning: training and evaluation loss (left) and accuracy (right) per epoch."))
    return figures


def _markdown(title: str, rows, figures, *, shape: str, threads: int, repeats: int) -> str:
    lines = [f"# {title}", "",
             f"Measured on the CPU with {threads} thread{'s' if threads != 1 else ''}, torch {torch.__version__}, "
             f"input {shape} per image. Latency: the median over 3 rounds that alternate between the two "
             f"models, each round the median of {repeats} timed runs (± its interquartile range in the first round). "
             f"Peak inference memory: weights plus the largest live activations (inputs, feature maps, "
             f"kernel scratch) of one forward, from torch.profiler's allocation events.", "",
             "| Metric | Before | After | After / before |", "|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in rows]
    lines += ["", "## Figures", ""]
    for i, (name, caption) in enumerate(figures, 1):
        lines += [f"![{name.removesuffix('.png')}]({name})", "", f"*Figure {i}. {caption}*", ""]
    return "\n".join(lines)


def write_report(directory: str | os.PathLike[str], *, before: nn.Module, after: nn.Module, example_inputs,
                 records: Sequence[Mapping] | None = None, history: Sequence[Mapping] | None = None,
                 accuracy: Mapping[str, float] | None = None,
                 onnx: Mapping[str, tuple[float, float]] | None = None, title: str = "Pruning report",
                 overwrite: bool = False, batches: Sequence[int] = (1, 64), repeats: int = 10,
                 threads: int | None = None) -> Path:
    """Write ``directory/report.md`` comparing ``before`` and ``after`` pruning; return the directory.

    The table has parameters, MACs per image, CPU latency at each of ``batches`` (``secateur.measure``
    with the example rows repeated to that batch, median of ``repeats`` runs on ``threads`` threads, in
    3 rounds alternating between the models (the median of the rounds),
    ``None`` = torch's current count), safetensors file size, peak inference memory (see
    :func:`~secateur.report.peak_memory`) at each batch, ``accuracy`` (``{"before": .., "after": ..}``)
    if given, one row per ``onnx`` entry (``{"row title": (before, after)}``), and after ÷ before.
    Figures, each embedded with a caption: layer widths (always); BN-γ histograms if a record has
    ``"gammas"``; accuracy vs MACs if records have ``"acc"``; fine-tuning curves if ``history``
    (``secateur.train.fit``'s). The raw numbers also go to ``metrics.json``.

    Models on an accelerator are measured on CPU copies; neither model is changed. The directory is
    built next to the target and renamed into place; an existing one raises ``FileExistsError`` unless
    ``overwrite``.
    """
    target = Path(directory)
    for name, model in (("before", before), ("after", after)):
        _check(model, nn.Module, name, optional=False)
    _check(title, str, "title", optional=False)
    _validate(records, history, accuracy, onnx)
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise ValueError(f"write_report: batches={batches!r} must be a non-empty list of ints >= 1")
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(f"report directory {target} already exists; pass overwrite=True to replace it")
    x1 = with_batch(as_inputs(example_inputs, torch.device("cpu")), 1)
    cpu_before, cpu_after = _cpu(before), _cpu(after)
    used_threads = threads if threads is not None else torch.get_num_threads()
    m0 = _measurements(cpu_before, x1, batches, repeats, threads)
    m1 = _measurements(cpu_after, x1, batches, repeats, threads)
    _alternate(((cpu_before, m0), (cpu_after, m1)), x1, batches, repeats, threads)
    rows = _table(m0, m1, batches, accuracy, onnx)
    w0, w1 = widths(cpu_before, x1), widths(cpu_after, x1)
    shape = ", ".join(str(tuple(x.shape[1:])) for x in x1)
    with atomic_dir(target, overwrite=overwrite) as tmp:
        figures = _figures(tmp, w0, w1, records, history)
        text = _markdown(title, rows, figures, shape=shape, threads=used_threads, repeats=repeats)
        (tmp / "report.md").write_text(text + "\n", encoding="utf-8")
        metrics = {"before": m0, "after": m1, "widths": {"before": w0, "after": w1},
                   "accuracy": dict(accuracy) if accuracy else None,
                   "extra": {k: list(v) for k, v in (onnx or {}).items()},
                   "threads": used_threads, "repeats": repeats, "torch": torch.__version__}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    return target

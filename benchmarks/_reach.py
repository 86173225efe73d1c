"""Engine benchmark, section 0 (reach): the models users bring (tests/zoo_real.py: torchvision
detection, segmentation and video, segmentation_models_pytorch, Ultralytics YOLO, timm), pruned by
secateur and by Torch-Pruning 1.6.1 at 30 % of every group's channels and to half the MACs.

Per row: did the tool return a model, does it run, is the output structure kept (paths and ranks; a
detector's box count is set by NMS), MACs and parameters kept, tool time. For secateur also the
exactness probe of the tests (a third of every exact group silenced then cut: the largest output
change relative to the output's scale; detectors on their heads' outputs), and how many channel
groups it keeps whole, with the reasons. Torch-Pruning gets the same probe on every group its
dependency graph finds (it marks none inexact, so LayerNorm-over-channel and attention-key groups,
which secateur reports as inexact and leaves out of its probe, are in Torch-Pruning's). Every job runs in a child process with a time limit, so a
tool that hangs (Torch-Pruning on Faster R-CNN) is a failed row, not a stuck benchmark.
"""
from __future__ import annotations

import collections
import copy
import multiprocessing as mp
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import secateur
from secateur.criteria import L1
from secateur.forward import signature

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from zoo import calibrate  # noqa: E402
from zoo_real import RealEntry, outputs, real_zoo, silence_and_cut  # noqa: E402

from _common import error_line, print_table, row  # noqa: E402
from _tp import TARGET, macs_of, output_layers, tp_search, tp_silence_and_cut  # noqa: E402

AMOUNT = 0.3
LIMIT_S = 180


def _structure(out) -> list:
    return [(path, len(s) if isinstance(s, tuple) else s) for path, s in signature(out)]


def _prune(tool: str, target: str, model: nn.Module, x: tuple) -> nn.Module:
    if tool == "secateur":
        kw = {"amount": AMOUNT} if target == "amount" else {"target_macs": TARGET}
        return secateur.prune(model, x, L1(), **kw)
    import torch_pruning as tp
    if target == "macs":
        return tp_search(model, x)
    small = copy.deepcopy(model).eval()
    tp.pruner.MetaPruner(small, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=AMOUNT,
                         ignored_layers=output_layers(small, x)).step()
    return small


def exactness(entry: RealEntry, model: nn.Module, x: tuple, graph=None) -> float:
    """Largest change of the outputs (relative to their scale) when a third of every exact group
    (secateur's ``graph``; without it, every group Torch-Pruning finds) is silenced and then cut."""
    silenced, cut = silence_and_cut(model, graph) if graph is not None else tp_silence_and_cut(model, x)
    pairs = zip(outputs(cut, x, entry.probes), outputs(silenced, x, entry.probes))
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-6)) for a, b in pairs
               if b.is_floating_point() and b.numel())


def _job(entry: RealEntry, tool: str, target: str) -> dict:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    x = entry.inputs()
    model = calibrate(entry.build(), x[0])
    fields = dict(model=entry.name, tool=tool, method="l1", section="reach",
                  target={"amount": AMOUNT} if target == "amount" else {"macs": TARGET})
    if tool == "secateur" and target == "amount":
        graph = secateur.trace(model, x)
        reasons = collections.Counter(g.frozen.split(" at node")[0][:60] for g in graph.groups if g.frozen)
        fields.update(groups=len(graph.groups), prunable=len(graph.prunable),
                      exact_groups=sum(g.exact for g in graph.prunable), opaque=sorted(graph.opaque),
                      frozen=dict(reasons.most_common(8)), exact_probe=exactness(entry, model, x, graph))
    if tool == "torch-pruning" and target == "amount":
        try:
            fields["exact_probe"] = exactness(entry, model, x)
        except Exception as exc:   # its graph fails on the model: the pruning row below says how
            fields["probe_error"] = error_line(exc)
    with torch.no_grad():
        want = _structure(model(*x))
    start = time.perf_counter()
    try:
        small = _prune(tool, target, model, x)
    except Exception as exc:
        return row(**fields, ok=False, tool_seconds=time.perf_counter() - start, error=error_line(exc))
    fields["tool_seconds"] = time.perf_counter() - start
    try:
        with torch.no_grad():
            got = _structure(small.eval()(*x))
    except Exception as exc:
        return row(**fields, runs=False, ok=False, error=f"pruned model fails: {error_line(exc)}")
    fields.update(runs=True, structure_ok=got == want, macs_ratio=macs_of(small, x) / macs_of(model, x),
                  params_ratio=sum(p.numel() for p in small.parameters()) / sum(p.numel() for p in model.parameters()))
    missed = target == "macs" and fields["macs_ratio"] > entry.max_macs
    error = "; ".join(m for bad, m in ((not fields["structure_ok"], "output structure changed"),
                                       (missed, f"MAC target missed ({fields['macs_ratio']:.3f})")) if bad)
    return row(**fields, ok=not error, error=error or None)


def _child(conn, name: str, tool: str, target: str) -> None:
    entry = next(e for e in real_zoo() if e.name == name)
    try:
        conn.send(_job(entry, tool, target))
    except Exception as exc:
        conn.send(row(model=name, tool=tool, section="reach", ok=False, error=error_line(exc)))


def run_job(name: str, tool: str, target: str, limit: float = LIMIT_S) -> dict:
    parent, child = mp.get_context("fork").Pipe(duplex=False)
    proc = mp.get_context("fork").Process(target=_child, args=(child, name, tool, target))
    start = time.perf_counter()
    proc.start()
    result = parent.recv() if parent.poll(limit) else None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
    return result or row(model=name, tool=tool, section="reach", ok=False,
                         target={"amount": AMOUNT} if target == "amount" else {"macs": TARGET},
                         tool_seconds=time.perf_counter() - start, error=f"no result in {limit:.0f} s (killed)")


def reach(quick: bool, models: tuple[str, ...] = ()) -> list[dict]:
    entries = [e for e in real_zoo() if not (quick and e.slow) and (not models or any(m in e.name for m in models))]
    rows = []
    for entry in entries:
        for target in ("amount", "macs"):
            for tool in ("secateur", "torch-pruning"):
                rows.append(run_job(entry.name, tool, target))
                r = rows[-1]
                print(f"  {entry.name:38s} {target:6s} {tool:13s} {'ok' if r['ok'] else 'FAIL ' + str(r['error'])}",
                      flush=True)
    print_table(rows, [("model", "model"), ("target", lambda r: str(r["target"])), ("tool", "tool"),
                       ("ok", "ok"), ("structure", "structure_ok"), ("MACs", "macs_ratio"),
                       ("params", "params_ratio"), ("exact", "exact_probe"), ("s", "tool_seconds"),
                       ("error", "error")], title="0. Reach: the models users bring")
    for tool in ("secateur", "torch-pruning"):
        done = sum(r["ok"] for r in rows if r["tool"] == tool)
        print(f"{tool}: {done}/{len(rows) // 2} jobs ok")
    return rows


def _trace_with(how: str, model: nn.Module, x: tuple) -> str:
    """'ok', or why ``how`` cannot read ``model``: the mechanism comparison behind secateur's tracer."""
    try:
        if how == "fx.symbolic_trace":
            torch.fx.symbolic_trace(model)
        elif how == "torch.export (non-strict)":
            torch.export.export(model, x, strict=False)
        else:
            graph = secateur.trace(model, x)
            return "ok" + (f" ({len(graph.opaque)} opaque)" if graph.opaque else "")
    except Exception as exc:
        return error_line(exc, 120)
    return "ok"


TRACERS = ("fx.symbolic_trace", "torch.export (non-strict)", "secateur.trace")


def _tracer_child(conn, name: str) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    entry = next(e for e in _all_entries() if e[0] == name)
    model, x = entry[1](), entry[2]()
    conn.send({how: _trace_with(how, model, x) for how in TRACERS})


def _all_entries() -> list[tuple]:
    from zoo import ZOO
    old = [(e.name, lambda e=e: e.build().eval(), lambda e=e: (e.example_input(),)) for e in ZOO]
    return old + [(e.name, e.build, e.inputs) for e in real_zoo()]


def tracers(quick: bool) -> list[dict]:
    """Which tracing mechanism reads which model: torch.fx's symbolic trace, torch.export's non-strict
    mode (with the example inputs' shapes fixed), and secateur's concrete-value fx tracer."""
    rows = []
    for name, *_ in _all_entries():
        parent, child = mp.get_context("fork").Pipe(duplex=False)
        proc = mp.get_context("fork").Process(target=_tracer_child, args=(child, name))
        proc.start()
        found = parent.recv() if parent.poll(LIMIT_S) else {how: "no result (killed)" for how in TRACERS}
        proc.join(5)
        if proc.is_alive():
            proc.kill()
        rows.append(row(model=name, section="tracers", tool="secateur", ok=found["secateur.trace"].startswith("ok"),
                        **{how: found[how] for how in TRACERS}))
        print(f"  {name:38s} " + "  ".join(f"{how}: {found[how][:40]}" for how in TRACERS), flush=True)
    for how in TRACERS:
        print(f"{how}: {sum(r[how].startswith('ok') for r in rows)}/{len(rows)} models")
    return rows


def readme_table(rows: list[dict]) -> str:
    """The README's reach table from the rows of engine_reach.json."""
    def cell(r: dict | None) -> str:
        if r is None:
            return "–"
        if r["ok"]:
            return f"{r['macs_ratio']:.2f}"
        err = str(r.get("error") or "")
        return "timeout" if "killed" in err else f"fails: {err.split(':')[0]}"
    lines = ["| model | groups (prunable, exact) | exact probe: secateur / Torch-Pruning | kept whole besides inputs "
             "and outputs | secateur 30 % / ½ MACs | Torch-Pruning 30 % / ½ MACs |", "|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        get = {(r["tool"], next(iter(r["target"]))): r for r in rows if r["model"] == model}
        ours, theirs = get.get(("secateur", "amount")) or {}, get.get(("torch-pruning", "amount")) or {}
        probe = " / ".join("–" if r.get("exact_probe") is None else f"{r['exact_probe']:.0e}" for r in (ours, theirs))
        whole = "; ".join(f"{n}× {why}" for why, n in (ours.get("frozen") or {}).items()
                          if why != "model output" and not why.startswith("model input")) or "–"
        lines.append(f"| {model} | {ours.get('groups')} ({ours.get('prunable')}, {ours.get('exact_groups')}) | {probe} "
                     f"| {whole} | {cell(get.get(('secateur', 'amount')))} / {cell(get.get(('secateur', 'macs')))} "
                     f"| {cell(get.get(('torch-pruning', 'amount')))} / {cell(get.get(('torch-pruning', 'macs')))} |")
    return "\n".join(lines)


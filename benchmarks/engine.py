"""Engine benchmark: secateur against Torch-Pruning 1.6.1, side by side in one process.

    .venv/bin/python benchmarks/engine.py [--quick] [--only tracers|reach|coverage|speed|latency]

0. Tracers: which mechanism reads which model (torch.fx, torch.export non-strict, secateur's own);
   reach: the models users bring (detectors, segmenters, YOLO, timm) pruned by both tools; see
   ``_reach.py``.
1. Coverage: every model of tests/zoo.py (slow ones skipped under --quick) pruned to 50% MACs with L1
   by each tool: did it work, does the pruned model run and give the right output shape (and finite
   values), MAC and parameter ratios, the tool's wall time.
2. Tool speed: trace + plan + surgery on torchvision resnet50 at 1x3x224x224, median of 3.
3. Real speed-up: resnet50, vgg16_bn, mobilenet_v2 (1000 classes) pruned to 0.5 MACs; CPU latency
   at batch 16 on 2 threads, default layout, channels_last, and channels_last with every BatchNorm
   folded into its conv (torch.fx's ``fuse``, as deployment runtimes do), every model of a table timed
   in interleaved rounds, in 3 independent timing runs (the row: median speed-up, and the efficiency's
   min and max across the runs); efficiency = speed-up x MAC ratio (1.0 = latency falls as fast as MACs).
   Unfolded BN and activations are memory-bound passes over feature maps, which shrink with the
   channel count (~0.7x at half the MACs), not with the MACs, so they cap efficiency below 1.

Both tools' MACs and parameters are counted by the counters ``secateur.measure`` uses
(``count_macs``: FlopCounterMode FLOPs / 2; ``count_params``), so both are counted the same way.
Torch-Pruning gets ``MagnitudeImportance(p=1)`` (L1, its default group reduction) and the classifier
(the last conv/linear layer to run, which secateur keeps whole because it feeds the output) in
``ignored_layers``. It has no MAC target, so to reach one we search its ``pruning_ratio`` with
one-shot prunes (``tp_search``); its own iterative mechanism (``progressive_pruning`` in its
benchmarks: many small ``step()``s with a MAC count after each) gives the same models but costs
50-100 steps, so it is only timed, in section 2 of the full run.
Writes benchmarks/results/engine.json (engine_quick.json with --quick).
"""
from __future__ import annotations

import _passive  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch starts OpenMP)

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.fx.experimental.optimization import fuse

import secateur
from secateur.forward import flat_tensors
from secateur.measure import count_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from zoo import ZOO, calibrate  # noqa: E402

from _common import (error_line, fmt, interleaved_latency, print_table, row, setup,  # noqa: E402
                     write_results)
from _reach import reach, tracers  # noqa: E402
from _tp import TARGET, TP_STEPS, macs_of, secateur_l1, tp_one_shot, tp_progressive, tp_search  # noqa: E402

TOLERANCE = 0.02      # a pruned model at most this far over the target still counts as reaching it
LATENCY_MODELS = ("resnet50", "vgg16_bn", "mobilenet_v2")
LAYOUTS = {"default": (torch.contiguous_format, False), "channels_last": (torch.channels_last, False),
           "channels_last+fold": (torch.channels_last, True)}   # (memory format, BN folded into convs)

Pruner = Callable[[nn.Module, torch.Tensor], nn.Module]
def tools() -> dict[str, Pruner]:
    return {"secateur": secateur_l1(), "torch-pruning": tp_search}


# -- 1. coverage -----------------------------------------------------------------------------------

def shapes(out) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in flat_tensors(out)]


def finite(out) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in flat_tensors(out))


def fingerprint(model: nn.Module) -> list:
    """Names, shapes and a checksum of every tensor, and every module's training flag."""
    return ([(k, tuple(v.shape), float(v.double().sum())) for k, v in model.state_dict().items()]
            + [m.training for m in model.modules()])


def coverage_rows(entry) -> list[dict]:
    """One row per tool for one zoo model; every failure is caught and kept in its row."""
    try:
        x = entry.example_input()
        model = calibrate(entry.build(), x)
        with torch.no_grad():
            expected = shapes(model(x))
        base = (macs_of(model, x), count_params(model))
    except Exception as exc:
        return [row(model=entry.name, tool=t, method="l1", target={"macs": TARGET}, section="coverage",
                    ok=False, error=f"base model: {error_line(exc)}") for t in tools()]
    return [coverage_row(entry.name, tool, prune, model, x, expected, base)
            for tool, prune in tools().items()]


def coverage_row(name: str, tool: str, prune: Pruner, model: nn.Module, x: torch.Tensor,
                 expected: list, base: tuple[int, int]) -> dict:
    fields = dict(model=name, tool=tool, method="l1", target={"macs": TARGET}, batch=x.shape[0],
                  section="coverage", runs=None, shape_ok=None, finite=None, tool_seconds=None)
    before = fingerprint(model)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned = prune(model, x)
    except Exception as exc:
        fields["tool_seconds"] = time.perf_counter() - start
        return row(**fields, ok=False, error=error_line(exc))
    fields["tool_seconds"] = time.perf_counter() - start
    try:
        with torch.no_grad():
            out = pruned.eval()(x)
    except Exception as exc:
        return row(**fields, runs=False, ok=False, error=f"pruned model fails: {error_line(exc)}")
    try:
        fields.update(runs=True, shape_ok=shapes(out) == expected, finite=finite(out),
                      macs_ratio=macs_of(pruned, x) / base[0], params_ratio=count_params(pruned) / base[1])
    except Exception as exc:
        return row(**fields, ok=False, error=f"counting MACs: {error_line(exc)}")
    problems = [msg for bad, msg in (
        (not fields["shape_ok"], f"output shapes {shapes(out)} != {expected}"),
        (not fields["finite"], "non-finite output"),
        (fingerprint(model) != before, "changed the caller's model"),
        (fields["macs_ratio"] > TARGET + TOLERANCE,
         f"target missed: macs_ratio {fields['macs_ratio']:.3f} > {TARGET}")) if bad]
    return row(**fields, ok=not problems, error="; ".join(problems) or None)


def coverage(quick: bool) -> list[dict]:
    entries = [e for e in ZOO if not (quick and e.slow)]
    rows = []
    for entry in entries:
        rows += coverage_rows(entry)
        for r in rows[-2:]:
            status = "ok" if r["ok"] else f"FAIL {r['error']}"
            print(f"  {entry.name:28s} {r['tool']:14s} {fmt(r['tool_seconds'])} s  {status}", flush=True)
    print_table(rows, [("model", "model"), ("tool", "tool"), ("ok", "ok"), ("runs", "runs"),
                       ("shape", "shape_ok"), ("MACs", "macs_ratio"), ("params", "params_ratio"),
                       ("seconds", "tool_seconds"), ("error", "error")],
                title=f"1. Coverage: L1 to {TARGET:g} MACs")
    total = len(entries)
    counts = {t: sum(r["ok"] for r in rows if r["tool"] == t) for t in tools()}
    print(f"secateur: {counts['secateur']}/{total} models, torch-pruning: {counts['torch-pruning']}/{total}")
    return rows


# -- 2. tool speed ---------------------------------------------------------------------------------

def tool_speed(quick: bool, repeats: int = 3) -> list[dict]:
    """Wall time to prune resnet50 at 224 px to the MAC target, median of ``repeats``, interleaved.

    Torch-Pruning three ways: one shot at a pruning_ratio known beforehand (its bare engine cost),
    the ratio search that the other sections use, and its own progressive mechanism (full run only:
    tens of seconds a run)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=1000).eval()
    x = torch.randn(1, 3, 224, 224)
    base_macs, base_params = macs_of(model, x), count_params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secateur_l1()(model, x)                # warm-ups, untimed
        ratio = tp_search(model, x).tp_ratio
        jobs = {"secateur": lambda: secateur_l1()(model, x),
                "tp-one-shot": lambda: tp_one_shot(model, x, ratio),
                "tp-search": lambda: tp_search(model, x)}
        if not quick:
            jobs["tp-progressive"] = lambda: tp_progressive(model, x)
        runs: dict[str, list[float]] = {name: [] for name in jobs}
        out: dict[str, nn.Module] = {}
        for _ in range(repeats):
            for name, job in jobs.items():
                start = time.perf_counter()
                out[name] = job()
                runs[name].append(time.perf_counter() - start)
        stages = secateur_stages(model, x)
    how = {"secateur": "prune(target_macs=0.5): trace + score + plan search + copy + surgery",
           "tp-one-shot": f"copy + DependencyGraph + 1 step at pruning_ratio={ratio:.3f}, known beforehand",
           "tp-search": f"search on pruning_ratio, one-shot prunes ({out['tp-search'].tp_probes} here)",
           "tp-progressive": f"copy + DependencyGraph + steps of 1/{TP_STEPS}, MAC count after each"}
    rows = []
    for name, seconds in runs.items():
        rows.append(row(model="resnet50", tool="secateur" if name == "secateur" else "torch-pruning",
                        method="l1", target={"macs": TARGET}, batch=1, section="tool_speed",
                        variant=name, how=how[name], macs_ratio=macs_of(out[name], x) / base_macs,
                        params_ratio=count_params(out[name]) / base_params, tool_seconds=statistics.median(seconds),
                        tool_seconds_all=seconds, **({"stages": stages} if name == "secateur" else {})))
    print_table(rows, [("variant", "variant"), ("median s", "tool_seconds"),
                       ("runs", lambda r: " ".join(f"{s:.2f}" for s in r["tool_seconds_all"])),
                       ("MACs", "macs_ratio"), ("what is timed", "how")],
                title=f"2. Tool speed: resnet50, 1x3x224x224, L1 to {TARGET:g} MACs")
    print("   secateur stages (one run, seconds): "
          + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    return rows


def secateur_stages(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    times = {}
    start = time.perf_counter()
    graph = secateur.trace(model, x)
    times["trace"] = time.perf_counter() - start
    start = time.perf_counter()
    plan = secateur.plan_pruning(model, graph, secateur.criteria.L1(), secateur.Target(macs=TARGET))
    times["score+plan"] = time.perf_counter() - start
    start = time.perf_counter()
    secateur.apply(copy.deepcopy(model), graph, plan)
    times["copy+surgery"] = time.perf_counter() - start
    return times


# -- 3. real speed-up ------------------------------------------------------------------------------

def latency(quick: bool) -> list[dict]:
    size, batch = (112, 16) if quick else (224, 16)
    repeats, warmup, runs_of = (5, 1, 1) if quick else (6, 2, 3)
    rows = []
    for name in LATENCY_MODELS:
        torch.manual_seed(0)
        x1 = torch.randn(1, 3, size, size)
        xb = torch.randn(batch, 3, size, size)
        base = calibrate(torchvision.models.get_model(name, weights=None, num_classes=1000), x1)
        info, pruned = prune_variants(name, base, x1, batch)
        for layout, (memory_format, fold) in LAYOUTS.items():  # default first: models change format in place
            models = {"base": base, **pruned}
            for m in models.values():
                m.to(memory_format=memory_format)
            if fold:
                models = {k: fuse(m.eval()).to(memory_format=memory_format) for k, m in models.items()}
            runs = [interleaved_latency(models, xb.contiguous(memory_format=memory_format), repeats=repeats,
                                        warmup=warmup) for _ in range(runs_of)]   # independent timing sessions
            base_ms, base_spread = runs[0]["base"]
            for key, fields in info.items():
                r = dict(fields, layout=layout, base_latency_ms=base_ms, base_spread_ms=base_spread)
                if key in runs[0]:
                    ms, spread = runs[0][key]
                    speedups = [t["base"][0] / t[key][0] for t in runs]
                    speedup = statistics.median(speedups)
                    r.update(latency_ms=ms, latency_spread_ms=spread, latency_ratio=1 / speedup, speedup=speedup,
                             speedup_runs=speedups, speedup_range=max(speedups) - min(speedups),
                             efficiency=speedup * fields["macs_ratio"],
                             efficiency_min=min(speedups) * fields["macs_ratio"],
                             efficiency_max=max(speedups) * fields["macs_ratio"])
                rows.append(row(**r))
        print(f"  {name}: done", flush=True)
    print_table(rows, [("model", "model"), ("layout", "layout"), ("tool", "tool"),
                       ("round_to", "round_to"), ("MACs", "macs_ratio"), ("params", "params_ratio"),
                       ("base ms", "base_latency_ms"), ("pruned ms", "latency_ms"),
                       ("±IQR", "latency_spread_ms"), ("speedup", "speedup"), ("range", "speedup_range"),
                       ("efficiency", "efficiency"), ("eff. min", "efficiency_min"), ("eff. max", "efficiency_max"),
                       ("error", "error")],
                title=f"3. Real speed-up: {size}x{size}, batch {batch}, 2 threads, median over {runs_of} "
                      f"independent runs of the median of {repeats} (interleaved); efficiency = speedup x MAC "
                      f"ratio, min/max across the runs")
    print("\nREADME table:\n" + readme_latency_table([r for r in rows if r.get("ok", True)]))
    return rows


def readme_latency_table(rows: list[dict]) -> str:
    """The README's speed-up table from the latency rows: speed-up (efficiency, its min-max across runs)."""
    variants = [("secateur", 1), ("secateur", 8), ("secateur", 16), ("torch-pruning", None)]
    lines = ["| model | layout | secateur `round_to=1` | `round_to=8` | `round_to=16` | Torch-Pruning |",
             "|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for layout in dict.fromkeys(r["layout"] for r in rows if r["model"] == model):
            found = {(r["tool"], r["round_to"]): r for r in rows if r["model"] == model and r["layout"] == layout}
            cells = []
            for key in variants:
                r = found.get(key)
                cells.append("–" if r is None or r.get("speedup") is None else
                             f"{r['speedup']:.2f}× ({r['efficiency']:.2f}; {r['efficiency_min']:.2f}–"
                             f"{r['efficiency_max']:.2f})")
            lines.append(f"| {model} | {layout} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prune_variants(name: str, base: nn.Module, x: torch.Tensor, batch: int):
    """secateur (round_to 1, 8, 16) and Torch-Pruning prunes of ``base``: row fields and models."""
    variants = {("secateur", 1): secateur_l1(1), ("secateur", 8): secateur_l1(8),
                ("secateur", 16): secateur_l1(16), ("torch-pruning", None): tp_search}
    base_macs, base_params = macs_of(base, x), count_params(base)
    info, pruned = {}, {}
    for (tool, round_to), prune in variants.items():
        fields = dict(model=name, tool=tool, method="l1", target={"macs": TARGET}, batch=batch,
                      section="latency", round_to=round_to, input_size=x.shape[-1])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                small = prune(base, x)
                fields["tool_seconds"] = time.perf_counter() - start
            fields.update(macs_ratio=macs_of(small, x) / base_macs,
                          params_ratio=count_params(small) / base_params)
            pruned[(tool, round_to)] = small
        except Exception as exc:
            fields.update(ok=False, error=error_line(exc))
        info[(tool, round_to)] = fields
    return info, pruned


SECTIONS = {"tracers": tracers, "reach": reach, "coverage": coverage, "speed": tool_speed, "latency": latency}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip slow models, small inputs, fewer runs")
    parser.add_argument("--only", choices=sorted(SECTIONS), help="run one section (results: engine_<section>.json)")
    parser.add_argument("--models", nargs="+", default=(),
                        help="with --only reach: rerun the models whose names contain these; other rows are kept")
    args = parser.parse_args(argv[1:])
    setup()
    start, rows = time.perf_counter(), []
    for section in [SECTIONS[args.only]] if args.only else SECTIONS.values():
        began = time.perf_counter()
        rows += section(args.quick, tuple(args.models)) if args.models and section is reach else section(args.quick)
        print(f"   ({section.__name__}: {time.perf_counter() - began:.0f} s)", flush=True)
    name = "engine" + (f"_{args.only}" if args.only else "") + ("_quick" if args.quick else "")
    path = write_results(name, rows, argv, keep_others=bool(args.models))
    print(f"\nwrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv)

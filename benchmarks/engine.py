"""Engine benchmark: secateur against Torch-Pruning 1.6.1, side by side in one process.

    .venv/bin/python benchmarks/engine.py [--quick]

1. Coverage: every model of tests/zoo.py (slow ones skipped under --quick) pruned to 50% MACs with L1
   by each tool: did it work, does the pruned model run and give the right output shape, MAC and
   parameter ratios (both counted by ``secateur.measure``), the tool's wall time.
2. Tool speed: trace + plan + surgery on torchvision resnet50 at 1x3x224x224, median of 3.
3. Real speed-up: resnet50, vgg16_bn, mobilenet_v2 (1000 classes) pruned to 0.5 MACs; CPU latency
   at batch 16 on 2 threads, default layout and channels_last; efficiency = speed-up x MAC ratio.

Torch-Pruning has no MAC target, so it reaches one by its own iterative mechanism (as in its
benchmarks/main.py ``progressive_pruning``): a ``MetaPruner`` with ``pruning_ratio=1.0`` and
``iterative_steps=STEPS`` steps until the MAC count (secateur's counter, as for every ratio here) is
at or under the target. Its importance is ``MagnitudeImportance(p=1)`` (L1) and the classifier (the
last conv/linear layer to run, which secateur keeps whole because it feeds the output) is ignored.
Writes benchmarks/results/engine.json (engine_quick.json with --quick).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision
from torch import nn

import secateur
from secateur.measure import count_macs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from zoo import ZOO, calibrate  # noqa: E402

from _common import (error_line, interleaved_latency, print_table, row, setup,  # noqa: E402
                     write_results)

TARGET = 0.5          # fraction of MACs to keep
TOLERANCE = 0.02      # a pruned model at most this far over the target still counts as reaching it
TP_STEPS = 200        # Torch-Pruning's iterative steps: each removes 0.5% of every group's channels
LATENCY_MODELS = ("resnet50", "vgg16_bn", "mobilenet_v2")
LAYOUTS = {"default": torch.contiguous_format, "channels_last": torch.channels_last}

Pruner = Callable[[nn.Module, torch.Tensor], nn.Module]


# -- the two tools ---------------------------------------------------------------------------------

def last_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The last conv/linear module to run on ``x``: the classifier that makes the output."""
    ran: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: ran.append(m)) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return ran[-1]


def secateur_l1(round_to: int = 1) -> Pruner:
    def run(model: nn.Module, x: torch.Tensor) -> nn.Module:
        return secateur.prune(model, x, secateur.criteria.L1(), target_macs=TARGET, round_to=round_to)
    return run


def tp_pruner(model: nn.Module, x: torch.Tensor, ratio: float, steps: int) -> tp.pruner.MetaPruner:
    return tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                pruning_ratio=ratio, iterative_steps=steps,
                                ignored_layers=[last_layer(model, x)])


def tp_progressive(model: nn.Module, x: torch.Tensor, steps: int = TP_STEPS) -> nn.Module:
    """Torch-Pruning to the MAC target: one small step at a time, counting MACs after each."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        budget = TARGET * count_macs(model, (x,))
        pruner = tp_pruner(model, x, 1.0, steps)
        for step in range(1, steps + 1):
            pruner.step()
            if count_macs(model, (x,)) <= budget:
                break
    model.tp_ratio = step / steps  # the channel ratio it took, for the one-shot timing
    return model


def tp_one_shot(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    """Torch-Pruning in one step at a known channel ratio (found beforehand by tp_progressive)."""
    model = copy.deepcopy(model).eval()
    tp_pruner(model, x, ratio, 1).step()
    return model


def tools() -> dict[str, Pruner]:
    return {"secateur": secateur_l1(), "torch-pruning": tp_progressive}


# -- 1. coverage -----------------------------------------------------------------------------------

def shapes(out) -> list[tuple[int, ...]]:
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, (tuple, list)):
        return [s for o in out for s in shapes(o)]
    if isinstance(out, dict):
        return [s for o in out.values() for s in shapes(o)]
    return []


def finite(out) -> bool:
    if isinstance(out, torch.Tensor):
        return bool(torch.isfinite(out).all())
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else []
    return all(finite(o) for o in items)


def coverage_row(entry, tool: str, prune: Pruner) -> dict:
    fields = dict(model=entry.name, tool=tool, method="l1", target={"macs": TARGET},
                  batch=entry.input_shape[0], section="coverage", runs=None, shape_ok=None,
                  finite=None, tool_seconds=None)
    try:
        x = entry.example_input()
        model = calibrate(entry.build(), x)
        with torch.no_grad():
            expected = shapes(model(x))
        base = secateur.measure(model, x, latency=False)
        start = time.perf_counter()
        pruned = prune(model, x)
        fields["tool_seconds"] = time.perf_counter() - start
        try:
            with torch.no_grad():
                out = pruned.eval()(x)
        except Exception as exc:
            return row(**fields, runs=False, ok=False, error=f"pruned model fails: {error_line(exc)}")
        ratios = secateur.measure(pruned, x, latency=False).ratio(base)
        fields.update(runs=True, shape_ok=shapes(out) == expected, finite=finite(out),
                      macs_ratio=ratios["macs_ratio"], params_ratio=ratios["params_ratio"])
        problems = [msg for bad, msg in (
            (not fields["shape_ok"], f"output shapes {shapes(out)} != {expected}"),
            (not fields["finite"], "non-finite output"),
            (fields["macs_ratio"] > TARGET + TOLERANCE,
             f"target missed: macs_ratio {fields['macs_ratio']:.3f} > {TARGET}")) if bad]
        return row(**fields, ok=not problems, error="; ".join(problems) or None)
    except Exception as exc:
        return row(**fields, ok=False, error=error_line(exc))


def coverage(quick: bool) -> list[dict]:
    entries = [e for e in ZOO if not (quick and e.slow)]
    rows = []
    for entry in entries:
        for tool, prune in tools().items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows.append(coverage_row(entry, tool, prune))
            r = rows[-1]
            status = "ok" if r["ok"] else f"FAIL {r['error']}"
            print(f"  {entry.name:28s} {tool:14s} {status}", flush=True)
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
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=1000).eval()
    x = torch.randn(1, 3, 224, 224)
    base = secateur.measure(model, x, latency=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ratio = tp_progressive(model, x).tp_ratio  # also the warm-up for Torch-Pruning
        secateur_l1()(model, x)                    # warm-up for secateur
        runs: dict[str, list[float]] = {"secateur": [], "tp-one-shot": [], "tp-progressive": []}
        out: dict[str, nn.Module] = {}
        jobs = {"secateur": lambda: secateur_l1()(model, x),
                "tp-one-shot": lambda: tp_one_shot(model, x, ratio),
                "tp-progressive": lambda: tp_progressive(model, x)}
        for i in range(repeats):
            for name, job in jobs.items():
                if name == "tp-progressive" and quick and i > 0:
                    continue  # ~25 s a run: once is enough for --quick
                start = time.perf_counter()
                out[name] = job()
                runs[name].append(time.perf_counter() - start)
        stages = secateur_stages(model, x)
    how = {"secateur": "prune(target_macs=0.5): trace + score + plan search + copy + surgery",
           "tp-one-shot": f"copy + DependencyGraph + 1 step at pruning_ratio={ratio:.3f} (known beforehand)",
           "tp-progressive": f"copy + DependencyGraph + steps of 1/{TP_STEPS} with a MAC count after each"}
    rows = []
    for name, seconds in runs.items():
        ratios = secateur.measure(out[name], x, latency=False).ratio(base)
        rows.append(row(model="resnet50", tool="secateur" if name == "secateur" else "torch-pruning",
                        method="l1", target={"macs": TARGET}, batch=1, section="tool_speed",
                        variant=name, how=how[name], macs_ratio=ratios["macs_ratio"],
                        params_ratio=ratios["params_ratio"], tool_seconds=statistics.median(seconds),
                        tool_seconds_all=seconds, **({"stages": stages} if name == "secateur" else {})))
    print_table(rows, [("variant", "variant"), ("median s", "tool_seconds"),
                       ("runs", lambda r: " ".join(f"{s:.2f}" for s in r["tool_seconds_all"])),
                       ("MACs", "macs_ratio"), ("what is timed", "how")],
                title="2. Tool speed: resnet50, 1x3x224x224, L1 to 0.5 MACs")
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
    repeats, warmup = (5, 1) if quick else (10, 2)
    variants = {("secateur", 1): secateur_l1(1), ("secateur", 8): secateur_l1(8),
                ("secateur", 16): secateur_l1(16), ("torch-pruning", None): tp_progressive}
    rows = []
    for name in LATENCY_MODELS:
        torch.manual_seed(0)
        x1 = torch.randn(1, 3, size, size)
        xb = torch.randn(batch, 3, size, size)
        base = calibrate(torchvision.models.get_model(name, weights=None, num_classes=1000), x1)
        base_stats = secateur.measure(base, x1, latency=False)
        pruned, info = {}, {}
        for (tool, round_to), prune in variants.items():
            fields = dict(model=name, tool=tool, method="l1", target={"macs": TARGET}, batch=batch,
                          section="latency", round_to=round_to, input_size=size)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start = time.perf_counter()
                    small = prune(base, x1)
                    fields["tool_seconds"] = time.perf_counter() - start
                fields.update(secateur.measure(small, x1, latency=False).ratio(base_stats))
                fields.pop("bytes_ratio", None)
                pruned[(tool, round_to)] = small
            except Exception as exc:
                fields.update(ok=False, error=error_line(exc))
            info[(tool, round_to)] = fields
        for layout, fmt in LAYOUTS.items():
            models = {"base": copy.deepcopy(base).to(memory_format=fmt),
                      **{k: copy.deepcopy(m).to(memory_format=fmt) for k, m in pruned.items()}}
            timed = interleaved_latency(models, xb.contiguous(memory_format=fmt),
                                        repeats=repeats, warmup=warmup)
            base_ms, base_spread = timed.pop("base")
            for key, fields in info.items():
                r = dict(fields, layout=layout, base_latency_ms=base_ms, base_spread_ms=base_spread)
                if key in timed:
                    ms, spread = timed[key]
                    speedup = base_ms / ms
                    r.update(latency_ms=ms, latency_spread_ms=spread, latency_ratio=ms / base_ms,
                             speedup=speedup, efficiency=speedup * fields["macs_ratio"])
                rows.append(row(**r))
            del models
        print(f"  {name}: done", flush=True)
    print_table(rows, [("model", "model"), ("layout", "layout"), ("tool", "tool"),
                       ("round_to", "round_to"), ("MACs", "macs_ratio"), ("params", "params_ratio"),
                       ("base ms", "base_latency_ms"), ("pruned ms", "latency_ms"),
                       ("±IQR", "latency_spread_ms"), ("speedup", "speedup"),
                       ("efficiency", "efficiency"), ("error", "error")],
                title=f"3. Real speed-up: {size}x{size}, batch {batch}, 2 threads, "
                      f"median of {repeats} (interleaved), efficiency = speedup x MAC ratio")
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip slow models, small inputs, fewer runs")
    args = parser.parse_args(argv[1:])
    setup()
    start = time.perf_counter()
    rows = coverage(args.quick)
    rows += tool_speed(args.quick)
    rows += latency(args.quick)
    path = write_results("engine_quick" if args.quick else "engine", rows, argv)
    print(f"\nwrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv)

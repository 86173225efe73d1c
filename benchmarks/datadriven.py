"""Data-driven criteria and layer-wise methods on real Fashion-MNIST: ThiNet's Figure 4 (layers pruned
without fine-tuning), whole networks at half the MACs against Torch-Pruning 1.6.1, the speed of
ThiNet's greedy selection, and the peak memory that recording takes on ResNet-50.

    python benchmarks/datadriven.py --quick   # 6,000 training images, 256 calibration, 1 fine-tune epoch
    python benchmarks/datadriven.py           # all 60,000, 1,000 calibration, 3 epochs (hours on 2 CPU cores)
    python benchmarks/datadriven.py --only fig4   # Figure 4 alone (before and after BN recalibration)

Baselines come from training.py's ``baseline`` (the same checkpoints); every row of a table starts
from a deep copy of the same baseline object and gets the same fine-tune (SGD lr 0.01, cosine, wd
1e-4, seed 0); accuracy is on the full 10,000-image test split. Fine-tunes checkpoint under
benchmarks/.cache/<mode>/ so a rerun resumes. Intra-op threads: $OMP_NUM_THREADS if set, else 2.
"""
from __future__ import annotations

import _passive  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch starts OpenMP)
import _common

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import secateur
from secateur.criteria import by_name
from secateur.criteria.thinet import greedy_order, naive_greedy
from secateur.data import calibration, fashion_mnist
from secateur.methods import record
from secateur.methods.layerwise import ChannelPruning, ThiNet, channel_pruning, thinet
from secateur.train import Optim, evaluate, fit
from training import CACHE, X, baseline, latency_ratio, loaders

SEED = 0
BUDGETS = {  # epochs; calib: calibration images
    "quick": dict(subset=6000, base=3, finetune=1, calib=256, compile=False),
    "full": dict(subset=None, base=15, finetune=3, calib=1000, compile=True),   # compile: 1.2-1.4x on CPU
}
RATES = (0.3, 0.5, 0.7)
FIG4_METHODS = ("random", "l1", "apoz", "taylor", "taylor2019", "thinet", "lasso")
CRITERIA = {name: by_name(name) for name in ("random", "l1", "apoz", "taylor", "taylor2019")}   # Random's seed is 0
SGD = Optim(lr=0.01, weight_decay=1e-4)   # training.py's fine-tune optimiser, for every row
MEMORY_TIMEOUT_S = 300


def threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS") or _common.THREADS)


def convs(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def layerwise(method: str, base, calib, **cfg) -> nn.Module:
    if method == "thinet":
        return thinet(base, calib, X, ThiNet(seed=SEED, **cfg), progress=False, recalibrate=0).model
    return channel_pruning(base, calib, X, ChannelPruning(seed=SEED, **cfg), progress=False, recalibrate=0).model


def measured(made, info: dict, measure, label: str) -> list[dict]:
    """One row per ``(tool, method, make)`` of ``made`` (see :func:`makers`): ``info`` plus what
    ``measure(small, tool, method)`` returns, or the error (a failing method is a row, not a crash); each printed."""
    rows = []
    for tool, method, make in made:
        start = time.perf_counter()
        try:
            small, extra = make()
            rows.append(_common.row(**info, tool=tool, method=method, **measure(small, tool, method), **extra))
        except Exception as e:
            rows.append(_common.row(**info, tool=tool, method=method, ok=False, error=_common.error_line(e)))
        r = rows[-1]
        shown = " ".join(f"{k} {_common.fmt(r.get(k))}" for k in ("macs_ratio", "acc_pruned", "acc_recalibrated",
                                                                   "acc_finetuned") if r.get(k) is not None)
        print(f"{label} {tool} {method}: {shown} ({time.perf_counter() - start:.0f} s)"
              f"{'' if r['ok'] else ' ' + r['error']}", flush=True)
    return rows


# --- 1. ThiNet's Figure 4: prune some layers, no fine-tune ------------------------------------------
def recalibrated(model: nn.Module, train, batches: int = 20) -> nn.Module:
    """``secateur.recalibrate_bn`` on the first ``batches`` of ``train`` (seeded: the same batches each time)."""
    torch.manual_seed(SEED)
    return secateur.recalibrate_bn(model, train, batches=batches)


def recalibrated_acc(model: nn.Module, train, test, batches: int = 20) -> float:
    """Test accuracy after :func:`recalibrated`."""
    return evaluate(recalibrated(model, train, batches), test)["acc"]


def fig4(base, acc_base, calib, test, train) -> list[dict]:
    names = convs(base)
    sets = {names[1]: (names[1],), names[3]: (names[3],), names[5]: (names[5],), "first 6 convs": tuple(names[:6])}
    b = record("baseline", base, X)

    def measure(small, tool, method):
        p = record("pruned", small, X, test)
        return dict(macs_ratio=p["macs"] / b["macs"], params_ratio=p["params"] / b["params"], acc_pruned=p["acc"],
                    acc_recalibrated=recalibrated_acc(small, train, test))

    def make(method, rate, layers):
        if method in ("thinet", "lasso"):
            return layerwise(method, base, calib, amount=rate, layers=layers), {}
        return secateur.prune(base, X, CRITERIA[method], amount=rate, data=calib, progress=False,
                              ignore=[n for n in names if n not in layers]), {}

    rows = []
    for label, layers in sets.items():
        for rate in RATES:
            info = dict(model="vgg8", experiment="fig4", layer_set=label, rate=rate,
                        target={"amount": rate, "layers": list(layers)}, acc_base=acc_base, seed=SEED)
            made = [("secateur", m, lambda m=m: make(m, rate, layers)) for m in FIG4_METHODS]
            rows += measured(made, info, measure, f"fig4 {label:>14} {rate:.1f}")
    return rows


def plot_fig4(rows: list[dict], acc_base: float, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sets = list(dict.fromkeys(r["layer_set"] for r in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 3.6), sharey=True)
    for ax, label in zip(axes, sets):
        for method in FIG4_METHODS:
            mine = [r for r in rows if r["layer_set"] == label and r["method"] == method and r["ok"]]
            if mine:
                line, = ax.plot([r["rate"] for r in mine], [r["acc_pruned"] for r in mine], marker="o", ms=4,
                                label=method)
                recal = [(r["rate"], r["acc_recalibrated"]) for r in mine if r.get("acc_recalibrated") is not None]
                if recal:   # the same cut after BN recalibration: dashed, same colour
                    ax.plot(*zip(*recal), ls=":", marker=".", color=line.get_color())
        ax.axhline(acc_base, ls="--", color="k", lw=1, label="baseline")
        ax.set_title(label)
        ax.set_xlabel("fraction of channels removed")
        ax.set_xticks(RATES)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy, no fine-tune (dotted: BN recalibrated)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=8)
    fig.suptitle("ThiNet Fig. 4 on Fashion-MNIST: VGG-8, layers pruned without fine-tuning")
    fig.tight_layout(rect=(0, 0, 0.91, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- 2. Whole network at half the MACs, against Torch-Pruning ------------------------------------------
def tp_prune(base, importance: str, ratio: float, calib) -> nn.Module:
    import torch_pruning as tp
    model = copy.deepcopy(base).eval()
    imp = {"l1": lambda: tp.importance.MagnitudeImportance(p=1), "bnscale": tp.importance.BNScaleImportance,
           "taylor": tp.importance.TaylorImportance}[importance]()
    pruner = tp.pruner.MetaPruner(model, X, importance=imp, pruning_ratio=ratio,
                                  ignored_layers=[m for m in model.modules() if isinstance(m, nn.Linear)])
    if importance == "taylor":  # TP's Taylor reads .grad: the calibration set's summed gradients, eval mode
        model.zero_grad(set_to_none=True)
        for x, y in calib:
            F.cross_entropy(model(x), y).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def tp_at_macs(base, importance, calib, macs0, target=0.5, ratio=None):
    """Pruned at ``ratio`` if that lands within 2% of ``target`` MACs, else at a bisected ratio."""
    def at(r):
        m = tp_prune(base, importance, r, calib)
        return m, record("tp", m, X)["macs"] / macs0
    if ratio is not None:
        m, got = at(ratio)
        if abs(got / target - 1) <= 0.02:
            return m, ratio
    lo, hi = 0.0, 0.95
    for _ in range(30):
        mid = (lo + hi) / 2
        m, got = at(mid)
        if abs(got / target - 1) <= 0.02:
            return m, mid
        lo, hi = (mid, hi) if got > target else (lo, mid)
    raise RuntimeError(f"no pruning_ratio gives {target} of the MACs (last {mid:.4f}: {got:.3f})")


def makers(base, calib, macs0, ours, theirs, target: float = 0.5):
    """(tool, method, make) for each row at ``target`` of the MACs; make() -> (pruned model, extra row
    fields). Torch-Pruning's ratio is searched once and tried first by the next importance."""
    for m in ours:
        if m in ("thinet", "lasso"):
            yield "secateur", m, lambda m=m: (layerwise(m, base, calib, macs=target), {})
        else:
            yield "secateur", m, lambda c=CRITERIA[m]: (secateur.prune(base, X, c, target_macs=target, data=calib,
                                                                       progress=False), {})
    found = {}
    for imp in theirs:
        def make(imp=imp):
            model, found["ratio"] = tp_at_macs(base, imp, calib, macs0, target, ratio=found.get("ratio"))
            return model, {"pruning_ratio": found["ratio"]}
        yield "torch-pruning", imp, make


def whole(name, base, acc_base, calib, train, test, B, ck) -> list[dict]:
    b = record("baseline", base, X)
    info = dict(model=name, experiment="whole", target={"macs": 0.5}, acc_base=acc_base,
                finetune_epochs=B["finetune"], seed=SEED, batch=64)

    def measure(small, tool, method):
        p = record("pruned", small, X, test)
        hist = fit(small, train, epochs=B["finetune"], optim=SGD, eval_loader=test, seed=SEED, progress=False,
                   checkpoint=ck / f"dd-{name}-{tool}-{method}", resume=True, compile=B["compile"])
        return dict(macs_ratio=p["macs"] / b["macs"], params_ratio=p["params"] / b["params"],
                    latency_ratio=latency_ratio(base, small), acc_pruned=p["acc"], acc_finetuned=hist[-1]["eval_acc"])

    made = makers(base, calib, b["macs"], ("l1", "apoz", "taylor", "thinet", "lasso"), ("l1", "bnscale", "taylor"))
    rows = measured(made, info, measure, f"whole {name}")
    drops = [r["acc_base"] - r["acc_finetuned"] for r in rows if r["tool"] == "torch-pruning" and r["ok"]]
    tp_best = min(drops) if drops else None
    for r in rows:
        if r["ok"]:
            r["drop"] = drop = r["acc_base"] - r["acc_finetuned"]
            r["goal_drop_0.3pt"] = drop <= 0.003
        if r["tool"] == "secateur" and r["ok"] and tp_best is not None:
            r["tp_best_drop"] = tp_best
            r["drop_vs_tp_best"] = drop / tp_best if tp_best > 0 else None
            r["goal_vs_tp"] = drop <= (0.8 * tp_best if tp_best > 0 else tp_best)
    return rows


# --- 3. ThiNet's greedy: Gram form vs naive ------------------------------------------------------------
def greedy_speed(C=256, m=10_000, remove=128) -> dict:
    g = torch.Generator().manual_seed(SEED)
    scale = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    x = (torch.randn(m, C, generator=g, dtype=torch.float64) + 0.3 * torch.randn(m, 1, generator=g,
                                                                                 dtype=torch.float64)) * scale
    fast = []
    for _ in range(5):
        start = time.perf_counter()
        order = greedy_order(x.T @ x)
        fast.append(time.perf_counter() - start)
    start = time.perf_counter()
    chosen = naive_greedy(x, remove)
    naive = time.perf_counter() - start
    same = set(order[:remove].tolist()) == set(chosen.tolist())
    assert same, "greedy_order and naive_greedy chose different sets"
    med, spread = _common.median_spread(fast)
    return _common.row(model=f"X {m}x{C}", tool="secateur", method="thinet greedy: gram vs naive", experiment="speed",
                       C=C, m=m, remove=remove, fast_s=med, fast_spread_s=spread, naive_s=naive, speedup=naive / med,
                       same_set=same, same_order=order[:remove].tolist() == chosen.tolist(),
                       goal_speedup_10x=naive / med >= 10, seed=SEED)


# --- 4. Peak memory of recording, ResNet-50 at 224 ------------------------------------------------------
MEMORY_KINDS = ("plain", "apoz", "thinet", "lasso")


def memory_child(kind: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torchvision
    _common.setup(threads())
    torch.manual_seed(SEED)
    model = torchvision.models.resnet50(weights=None).eval()
    data = TensorDataset(torch.randn(64, 3, 224, 224), torch.randint(0, 1000, (64,)))
    loader = DataLoader(data, batch_size=16)
    graph = secateur.trace(model, torch.zeros(1, 3, 224, 224))   # traced in every kind, plain included
    start = time.perf_counter()
    if kind == "plain":
        with torch.no_grad():
            for x, _ in loader:
                model(x)
    else:
        crit = by_name(kind)
        crit.bind(model, graph, loader)
    seconds = time.perf_counter() - start
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds}))


def memory_rows() -> list[dict]:
    rows = []
    for kind in MEMORY_KINDS:
        info = dict(model="resnet50", tool="secateur", method=f"record {kind}", experiment="memory", batch=16,
                    images=64, resolution=224, seed=SEED)
        try:
            p = subprocess.run([sys.executable, __file__, "--memory-child", kind], capture_output=True, text=True,
                               timeout=MEMORY_TIMEOUT_S)
            if p.returncode:
                raise RuntimeError((p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1])
            out = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append(_common.row(**info, peak_rss_mb=out["maxrss_mb"], seconds=out["seconds"]))
        except subprocess.TimeoutExpired:
            rows.append(_common.row(**info, ok=False, error=f"TimeoutExpired: over {MEMORY_TIMEOUT_S} s"))
        except Exception as e:
            rows.append(_common.row(**info, ok=False, error=_common.error_line(e)))
        print(f"memory {kind}: {rows[-1].get('peak_rss_mb')} MB {rows[-1]['error'] or ''}", flush=True)
    plain = rows[0].get("peak_rss_mb")
    for r in rows:
        if plain is not None and r.get("peak_rss_mb") is not None:
            r["overhead_mb"] = r["peak_rss_mb"] - plain
    return rows


def prepare(quick: bool, stem: str):
    """What a data-driven run starts from: threads, mode, budgets, cache, result name, and the seeded
    training/test loaders and calibration set."""
    _common.setup(threads())
    mode = "quick" if quick else "full"
    B = BUDGETS[mode]
    torch.manual_seed(SEED)
    train, test = loaders(B["subset"], seed=SEED)
    calib = calibration(fashion_mnist("train"), B["calib"], seed=SEED, batch_size=64)
    return mode, B, CACHE / mode, f"{stem}_quick" if quick else stem, train, test, calib


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=("fig4",), help="run only this section; the other rows stay as they are")
    ap.add_argument("--memory-child", choices=MEMORY_KINDS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv[1:])
    if args.memory_child:
        return memory_child(args.memory_child)
    started = time.perf_counter()
    mode, B, ck, name, train, test, calib = prepare(args.quick, "datadriven")
    print(f"seeds: {SEED} (torch, training subset, calibration draw, fit, Random, ThiNet/LASSO sampling); "
          f"threads {torch.get_num_threads()}; mode {mode}", flush=True)
    keep = None if args.quick else lambda stage: ck / f"datadriven-{stage}.rows.json"   # full runs resume
    rows = []
    if not args.only:
        rows = _common.stage_rows(keep and keep("speed"), lambda: [greedy_speed()] + memory_rows())
        print(f"greedy: {rows[0]['fast_s'] * 1e3:.1f} ms vs naive {rows[0]['naive_s']:.2f} s", flush=True)
        _common.write_results(name, rows, argv)
    bases, acc = {}, {}
    for model in ("vgg8",) if args.only else ("vgg8", "resnet56"):
        bases[model] = baseline(model, mode, train, test, B["base"])
        acc[model] = evaluate(bases[model], test)["acc"]
        print(f"baseline {model}: test acc {acc[model]:.4f}", flush=True)
    f4 = _common.stage_rows(keep and keep("fig4"), lambda: fig4(bases["vgg8"], acc["vgg8"], calib, test, train))
    png = _common.RESULTS / f"{name}_fig4.png"
    plot_fig4(f4, acc["vgg8"], png)
    rows += f4
    out = _common.write_results(name, rows, argv, keep_others=bool(args.only))   # --only: the other rows stay
    if args.only:
        return report(rows, mode, out, png, time.perf_counter() - started)
    for model, base in bases.items():
        rows += _common.stage_rows(keep and keep(f"whole-{model}"),
                                   lambda: whole(model, base, acc[model], calib, train, test, B, ck))
        out = _common.write_results(name, rows, argv)
    report(rows, mode, out, png, time.perf_counter() - started)


def report(rows, mode, out, png, seconds) -> None:
    f4 = [r for r in rows if r.get("experiment") == "fig4"]
    pivot = {}
    for r in f4:
        p = pivot.setdefault((r["layer_set"], r["method"]), {"set": r["layer_set"], "method": r["method"]})
        p[f"{r['rate']:.0%}"] = r["acc_pruned"] if r["ok"] else "ERR"
        p[f"{r['rate']:.0%} recal"] = r.get("acc_recalibrated", "-") if r["ok"] else "ERR"
    _common.print_table(list(pivot.values()), [("layers", "set"), ("method", "method")]
                        + [(f"acc @{k:.0%}{s}", f"{k:.0%}{s}") for k in RATES for s in ("", " recal")],
                        title=f"1. ThiNet Fig. 4, VGG-8 no fine-tune (base {f4[0]['acc_base']:.4f}), then BN "
                              f"recalibrated on 20 training batches; plot {png}")
    _common.print_table([r for r in rows if r.get("experiment") == "whole"],
                        [("model", "model"), ("tool", "tool"), ("method", "method"), ("MACs", "macs_ratio"),
                         ("params", "params_ratio"), ("latency", "latency_ratio"), ("base", "acc_base"),
                         ("pruned", "acc_pruned"), ("tuned", "acc_finetuned"), ("drop", "drop"),
                         ("÷TP best", "drop_vs_tp_best"), ("≤0.8×TP", "goal_vs_tp"), ("≤0.3pt", "goal_drop_0.3pt"),
                         ("error", "error")], title="2. Whole network at 0.5x MACs, same fine-tune")
    _common.print_table([r for r in rows if r.get("experiment") == "speed"],
                        [("C", "C"), ("m", "m"), ("remove", "remove"), ("gram+greedy s", "fast_s"),
                         ("naive s", "naive_s"), ("speed-up", "speedup"), ("same set", "same_set"),
                         ("same order", "same_order")], title="3. ThiNet greedy selection")
    _common.print_table([r for r in rows if r.get("experiment") == "memory"],
                        [("what", "method"), ("peak RSS MB", "peak_rss_mb"), ("overhead MB", "overhead_mb"),
                         ("seconds", "seconds"), ("ok", "ok"), ("error", "error")],
                        title="4. Peak memory, ResNet-50 224x224, 64 images in batches of 16")
    print(f"\n{mode}: {seconds / 60:.1f} min; written to {out}")


if __name__ == "__main__":
    main(sys.argv)

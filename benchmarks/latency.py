"""Latency as the target: prune to half the *measured* latency on a runtime, three ways, side by side.

    .venv/bin/python benchmarks/latency.py [--quick] [--models resnet50,...] [--runtimes onnxruntime,torch]
    .venv/bin/python benchmarks/latency.py --models vgg8,resnet56 --runtimes onnxruntime --batches 1,64 \
        --keep benchmarks/.cache/full/latency-models    # the Fashion-MNIST baselines, kept for fine-tuning

For each model (torchvision, random weights, 1000 classes, batch 1, 224 px; ``--quick``: resnet18 at
112 px) and runtime, at ``target_latency = 0.5``, on 2 threads:

* ``secateur-latency``: ``secateur.prune(..., target_latency=0.5, runtime=)``: per-layer latency
  tables (built first, cached, then read back by ``prune``; cost, cache hits and whether the model's
  fit was measured or read back recorded), the greedy planner on them (its default limit: at
  most half of any group while that meets the goal), then measured and re-planned until within 5 %
  (past what the runtime reaches: the cut keeping the most within 5 % of the fastest measured); the
  table's prediction for the final model is recorded too;
* ``secateur-macs``: the MAC planner, its ``target_macs`` searched (8 probes at most) until its
  measured latency is within 3 % of what the latency plan measures (median of 3): the two are
  compared at equal latency, what a user of a MAC-only tool does by hand;
* ``torch-pruning``: Torch-Pruning 1.6.1 (L1, output layers ignored), its ``pruning_ratio`` searched
  the same way.

The three final models are then timed together in 3 independent sessions (fresh runtime sessions,
6 rounds that take the original and the three in turn, ~0.25 s of runs per model per round; a session
in which the original runs 15 % slower than its fastest, a busy host, is timed again; each session is
logged on stderr): the row holds the median ratio to the original and the spread (max - min). MACs
and params are ratios to the original. PyTorch runs under OpenMP's default wait policy, as a deployed
process does (since 2026-12-02 15:10; before, ``_common`` set PASSIVE here too, and a passive thread
wakes for every operation: ResNet-56 on Fashion-MNIST at batch 1 ran 19.7 ms, not 4.3). Results:
``benchmarks/results/latency.json``, written after each model, runtime and batch (a run stopped
part-way keeps the rows it finished).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import error_line, fmt, print_table, row, setup, write_results  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402

import secateur  # noqa: E402
import secateur.runtimes as rt  # noqa: E402
from secateur.criteria import L1  # noqa: E402

TARGET, THREADS, RUNS = 0.5, 2, 3
FMNIST = ("vgg8", "resnet56")
BASELINES = Path(__file__).resolve().parent / "baselines"


def _search(prune_at, lo: float, hi: float, ratio_of, aim: float, probes: int = 8):
    """Bisect a knob in [lo, hi] (larger prunes less) until the measured ratio is within 3 % of
    ``aim``; returns (model, knob, probes used) of the closest probe."""
    best = None
    for probe in range(1, probes + 1):
        knob = (lo + hi) / 2
        small = prune_at(knob)
        got = ratio_of(small)
        if best is None or abs(got - aim) < abs(best[1] - aim):
            best = (small, got, knob, probe)
        if abs(got - aim) <= 0.03 * aim:
            break
        lo, hi = (lo, knob) if got > aim else (knob, hi)
    return best[0], best[2], best[3]


def joint_ratios(model, smalls: list, x, runtime: str, runs: int = RUNS) -> list[list[float]]:
    """Each of ``smalls``' latency over ``model``'s, all timed in the same alternating rounds
    (``secateur.runtimes.ratios_to``), in ``runs`` independent sessions: ratios[i] is small i's ratio
    in every session."""
    ratios = rt.ratios_to(model, x, runtime, threads=THREADS)
    return [list(r) for r in zip(*(ratios(smalls) for _ in range(runs)))]


def _tp(model, x, ratio: float):
    from _tp import tp_one_shot
    return tp_one_shot(model, x, ratio)


def build(name: str, size: int, batch: int):
    """(model, example inputs): a torchvision model with random weights, or a committed Fashion-MNIST
    baseline (``vgg8``, ``resnet56``) at 28 px."""
    torch.manual_seed(0)
    if name in FMNIST:
        model = secateur.models.create_model(name, in_channels=1)
        model.load_state_dict(secateur.io.load_state_dict_file(BASELINES / f"{name}-fashion-mnist-full.safetensors"))
        return model.eval(), torch.randn(batch, 1, 28, 28)
    return getattr(torchvision.models, name)().eval(), torch.randn(batch, 3, size, size)


def run_one(name: str, size: int, runtime: str, batch: int = 1, keep: Path | None = None,
            limits: tuple[float, ...] = ()) -> list[dict]:
    """The three rows of one model on one runtime: the latency plan first, then the MAC plan and
    Torch-Pruning searched to *its* measured latency (equal latency, not only the same target), the
    three final models timed together in ``RUNS`` sessions; ``keep``: save each final model there
    (with a manifest.json, as benchmarks/_quality_rows.py's prepare does) for the same fine-tune;
    ``limits``: also the latency plan with each of these ``max_amount`` (an ablation of its default)."""
    model, x = build(name, size, batch)
    macs0 = secateur.measure(model, x, latency=False).macs
    params0 = sum(p.numel() for p in model.parameters())
    graph = secateur.trace(model, x)
    # timed (or read from the cache) before prune, which then reads it back: the row records its cost
    table = rt.latency_table(model, graph, runtime, threads=THREADS)
    ratio_of = rt.ratio_to(model, x, runtime, threads=THREADS)   # each call loads both models afresh
    aim = TARGET

    def latency_plan(limit: float | None = None):   # prune's default limit, or max_amount=limit
        return lambda: (secateur.prune(model, x, L1(), target_latency=TARGET, runtime=runtime, threads=THREADS,
                                       max_amount=limit), {})
    tools = {
        "secateur-latency": latency_plan(),
        "secateur-macs": lambda: _knobbed(_search(lambda m: secateur.prune(model, x, L1(), target_macs=m),
                                                  0.05, 1.0, ratio_of, aim), "target_macs"),
        "torch-pruning": lambda: _knobbed(_search(lambda r: _tp(model, x, 1 - r), 0.05, 1.0, ratio_of, aim),
                                          "pruning_ratio", invert=True),
    }
    tools.update({f"secateur-latency-max{limit:g}": latency_plan(limit) for limit in limits})
    rows, made = [], {}
    for tool, make in tools.items():
        fields = dict(model=name, tool=tool, method=f"l1/{runtime}", target={"latency": TARGET}, batch=batch,
                      runtime=runtime, input_size=x.shape[-1], threads=THREADS, section="latency")
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:   # kept in the row: a re-plan that missed says so
                warnings.simplefilter("always")
                small, extra = make()
                missed = [str(w.message) for w in caught if "secateur.prune" in str(w.message)]
                seconds = time.perf_counter() - start
                if tool == "secateur-latency":   # the others are searched to what this one measures
                    aim = statistics.median(ratio_of(small) for _ in range(RUNS))
        except Exception as e:   # a tool that fails is a row, not the end of the run
            rows.append(row(**fields, ok=False, error=error_line(e), tool_seconds=time.perf_counter() - start))
            print(f"{name} {runtime} {tool}: fails: {error_line(e)}", flush=True)
            continue
        if tool == "secateur-latency":
            extra = dict(predicted_ratio=table.predict(small) / table.total(), table_seconds=table.seconds,
                         table_measured=table.measured, table_hits=table.hits, table_fitted=table.fitted)
        widths = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
        made[tool] = small
        rows.append(row(**fields, matched_to=None if tool.startswith("secateur-latency") else aim,
                        macs_ratio=secateur.measure(small, x, latency=False).macs / macs0,
                        params_ratio=sum(p.numel() for p in small.parameters()) / params0,
                        widths_multiple_of_8=sum(w % 8 == 0 for w in widths) / len(widths),
                        tool_seconds=seconds, warning=missed[-1] if missed else None, **extra))
    timed = dict(zip(made, joint_ratios(model, list(made.values()), x, runtime)))
    for r in rows:
        if r["tool"] in timed:
            ratios = timed[r["tool"]]
            r.update(latency_ratio=statistics.median(ratios), latency_runs=ratios,
                     latency_spread=max(ratios) - min(ratios))
            if keep is not None:
                _keep(keep, name, f"b{batch}-{runtime}/{r['tool']}", made[r["tool"]], r)
            print(f"{name} {runtime} {r['tool']}: latency {fmt(r['latency_ratio'])} "
                  f"(runs {', '.join(fmt(v) for v in ratios)}), MACs {fmt(r['macs_ratio'])}", flush=True)
    return rows


def _keep(folder: Path, name: str, row_name: str, small, result: dict) -> None:
    """Save ``small`` for the fine-tune and add its manifest row (accuracy right after the cut and
    after BN recalibration, on the 10,000 test images)."""
    from _quality_rows import add_to_manifest
    from datadriven import recalibrated_acc
    from training import loaders
    train, test = loaders(None)
    acc = secateur.train.evaluate(small, test)["acc"]
    add_to_manifest(folder, name, row_name, small, dict(
        target=dict(result["target"], batch=result["batch"], runtime=result["runtime"]),
        macs_ratio=result["macs_ratio"], params_ratio=result["params_ratio"], latency_ratio=result["latency_ratio"],
        acc_pruned=acc, acc_recalibrated=recalibrated_acc(small, train, test)))


def _knobbed(found, key: str, invert: bool = False):
    small, knob, probes = found
    return small, {key: 1 - knob if invert else knob, "probes": probes}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="resnet50,mobilenet_v2,vgg16_bn")
    parser.add_argument("--runtimes", default="onnxruntime,torch")
    parser.add_argument("--batches", default="1", help="e.g. 1,64")
    parser.add_argument("--keep", type=Path, help="save every final model there, for benchmarks/quality.py's fine-tune")
    parser.add_argument("--limits", default="", help="also the latency plan at these max_amount, e.g. 1.0,0.75")
    args = parser.parse_args(argv)
    setup(THREADS)
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")   # each timing session, on stderr:
    logging.getLogger("secateur.runtimes").setLevel(logging.INFO)                # its retries show there
    models = [("resnet18", 112)] if args.quick else [(m, 224) for m in args.models.split(",")]
    limits = tuple(float(v) for v in args.limits.split(",") if v)
    rows = []
    for name, size in models:
        for runtime in args.runtimes.split(","):
            for batch in map(int, args.batches.split(",")):
                rows += run_one(name, size, runtime, batch, args.keep, limits)
                # after each model, runtime and batch: a run stopped part-way keeps what it finished
                write_results("latency_quick" if args.quick else "latency", rows, ["benchmarks/latency.py", *argv],
                              keep_others=True)
    print_table(rows, [("model", "model"), ("runtime", "runtime"), ("tool", "tool"),
                       ("latency", lambda r: fmt(r.get("latency_ratio"))),
                       ("spread", lambda r: fmt(r.get("latency_spread"))),
                       ("predicted", lambda r: fmt(r.get("predicted_ratio"))),
                       ("MACs", lambda r: fmt(r.get("macs_ratio"))), ("params", lambda r: fmt(r.get("params_ratio"))),
                       ("x8", lambda r: fmt(r.get("widths_multiple_of_8"))),
                       ("s", lambda r: fmt(r.get("tool_seconds"), 1)), ("error", "error")])


if __name__ == "__main__":
    main(sys.argv[1:])

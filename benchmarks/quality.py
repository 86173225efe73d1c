"""Accuracy that survives little or no fine-tuning, on the committed Fashion-MNIST baselines (VGG-8,
ResNet-56), at half and at a quarter of the MACs, Torch-Pruning 1.6.1 side by side at the same MACs.

    python benchmarks/quality.py --only cut        # 1. right after the cut, without and with BN recalibration
    python benchmarks/quality.py --only prepare    # 2-4: every row's model at a quarter of the MACs (CPU)
    python benchmarks/quality.py --only finetune   # 2-4: fine-tune them (the GPU when there is one)
    python benchmarks/quality.py --only report     # the tables from what the sections kept

1. *cut*: every criterion (Random, L1, APoZ, Taylor, Taylor-2019, ThiNet, LASSO) and Torch-Pruning's
   L1, BN-scale and Taylor importances, each pruned once to the target; test accuracy of the model as
   cut, and after ``secateur.recalibrate_bn`` on 20 training batches of 128 (the same for every row,
   Torch-Pruning's models included: recalibration is the tool's, not the criterion's).

2. *allocation* at a quarter of the MACs (L1 scores): uniform, global, Li's sensitivity ratios (curves
   on 1,024 training images, the tolerance bisected to the budget), greedy and search
   (``secateur.methods.allocate``), then ThiNet, LASSO and Torch-Pruning's three importances; each
   fine-tuned 1 epoch (SGD lr 0.01, cosine annealed step by step, wd 1e-4), seed 0.
3. *decide*: the best secateur row, Torch-Pruning's best, the better automatic allocation (greedy,
   search) and uniform again with seeds 1 and 2 (``--seeds N``: to N - 1; mean ± std), the best
   secateur architecture trained from scratch (random init, the baseline's 15 epochs + 1 at lr 0.1,
   seeds 0-2) and fine-tuned with distillation from the baseline; a paired bootstrap (10,000
   resamples of the 10,000 test images and of each row's seeds) of each accuracy difference, and of
   the same claims right after the cut (every prepared row BN-recalibrated, not fine-tuned: variant
   "recalibrated").

Accuracy is on the full 10,000-image test split; calibration data (data criteria, ThiNet, LASSO) is
1,000 training images. Each finished section is kept under benchmarks/.cache/full/ and skipped by a
rerun (delete its rows file to measure again); the fine-tuned rows (each with its per-image
correctness and how its model was prepared) go to benchmarks/results/quality-finetune.json, which is
committed, so that a new checkout resumes the fine-tunes and rebuilds the report without the
cache. Intra-op threads: $OMP_NUM_THREADS if set, else 2.
"""
from __future__ import annotations

import _passive  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch starts OpenMP)
import _common

import argparse
import sys
import time

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import _quality_rows as q
from datadriven import SEED, makers, measured, prepare, recalibrated, recalibrated_acc
from secateur.data import fashion_mnist
from secateur.methods import record
from secateur.train import evaluate
from training import X, baseline

TARGETS = (0.5, 0.25)
OURS = ("random", "l1", "apoz", "taylor", "taylor2019", "thinet", "lasso")
THEIRS = ("l1", "bnscale", "taylor")
SECTIONS = ("cut", "prepare", "finetune", "report")
MODELS = ("vgg8", "resnet56")
ROWS = Path(__file__).resolve().parent / "results" / "quality-finetune.json"   # committed: days of CPU


def cut(name, base, acc_base, calib, train, test) -> list[dict]:
    b = record("baseline", base, X)

    def measure(small, tool, method):
        p = record("pruned", small, X, test)
        return dict(macs_ratio=p["macs"] / b["macs"], params_ratio=p["params"] / b["params"], acc_pruned=p["acc"],
                    acc_recalibrated=recalibrated_acc(small, train, test))

    rows = []
    for target in TARGETS:
        info = dict(model=name, experiment="cut", target={"macs": target}, acc_base=acc_base, seed=SEED)
        rows += measured(makers(base, calib, b["macs"], OURS, THEIRS, target), info, measure, f"cut {name} {target}")
    return rows


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--folder", type=Path, help="prepared models (default benchmarks/.cache/full/quality-models)")
    ap.add_argument("--rows", type=Path, help=f"fine-tuned rows (default {ROWS.relative_to(ROWS.parents[2])}; "
                    "--quick: benchmarks/.cache/full/quality-finetune-quick.json)")
    ap.add_argument("--minutes", type=float, default=1e9, help="finetune: start no row after this many minutes")
    ap.add_argument("--workers", type=int, default=0, help="finetune: data loader processes")
    ap.add_argument("--quick", action="store_true", help="finetune: 1,024 training images, 1 scratch epoch (a dry run)")
    ap.add_argument("--seeds", type=int, default=3, help="finetune: seeds of the rows that decide a claim (from scratch: 3)")
    ap.add_argument("--first", action="store_true", help="finetune: only every row's seed-0 fine-tune")
    ap.add_argument("--prepare-rows", nargs="+", help="prepare: only these rows (e.g. secateur/greedy)")
    ap.add_argument("--finetune-rows", nargs="+", help="finetune: only the rows matching these patterns (e.g. 'b64-*')")
    args = ap.parse_args(argv[1:])
    sections = args.only or SECTIONS
    started = time.perf_counter()
    mode, B, ck, name, train, test, calib = prepare(False, "quality")
    folder = args.folder or ck / "quality-models"
    rows_file = args.rows or (ck / "quality-finetune-quick.json" if args.quick else ROWS)
    bases = {m: baseline(m, mode, train, test, B["base"]) for m in args.models}
    rows = []
    for model, base in bases.items():
        kept = ck / f"quality-cut-{model}.rows.json"
        if "cut" in sections:
            acc = evaluate(base, test)["acc"]
            rows += _common.stage_rows(kept, lambda: cut(model, base, acc, calib, train, test))
        elif "report" in sections and kept.exists():
            rows += json.loads(kept.read_text())
        if "prepare" in sections:
            q.prepare(model, base, calib, train, test, folder, args.prepare_rows)
    if "finetune" in sections:
        data = fashion_mnist("train")
        if args.quick:
            data = torch.utils.data.Subset(data, range(1024))
        loader = DataLoader(data, batch_size=128, shuffle=True, drop_last=True, num_workers=args.workers,
                            persistent_workers=args.workers > 0)
        q.finetune(folder, list(bases), lambda m: copy.deepcopy(bases[m]), loader,
                   DataLoader(fashion_mnist("test"), batch_size=1000), rows_file, epochs=1,
                   scratch_epochs=1 if args.quick else B["base"] + 1, deadline=time.time() + 60 * args.minutes,
                   checkpoints=ck / "checkpoints", first_only=args.first, only=args.finetune_rows, seeds=args.seeds,
                   recalibrate=lambda m: recalibrated(m, train))
    if "report" in sections or "cut" in sections:
        if rows_file.exists():
            rows += decided(json.loads(rows_file.read_text()))
        out = _common.write_results(name, rows, argv, keep_others=True)
        report(rows, out, time.perf_counter() - started)


def decided(tuned: list[dict]) -> list[dict]:
    """Result rows from the fine-tuned ones: mean ± std over seeds per (model, row, variant), with the
    prepared model's MACs and accuracy after the cut, and the paired bootstrap of the decisions."""
    out = []
    for model in dict.fromkeys(r["model"] for r in tuned):
        groups = {}
        for r in tuned:
            if r["model"] == model:
                groups.setdefault((r["row"], r["variant"]), []).append(r)
        seeds, first = {}, {}
        for (row, variant), rs in groups.items():
            first[row, variant] = next((r["acc"] for r in rs if r["seed"] == 0), 0.0)
            tool, method = row.split("/")
            accs = [r["acc"] for r in rs]
            seeds[row, variant] = np.stack([q.unpack(r["correct"], 10_000) for r in rs])
            if variant == "recalibrated":   # the prepared row's acc_recalibrated: for the bootstrap only
                continue
            m = rs[0]["prepared"]
            out.append(_common.row(
                model=model, tool=tool, method=f"{method} ({variant})", experiment="finetune",
                target=m.get("target", {"macs": q.TARGET}), macs_ratio=m["macs_ratio"], params_ratio=m["params_ratio"],
                latency_ratio=m.get("latency_ratio"),
                acc_pruned=m["acc_pruned"], acc_recalibrated=m["acc_recalibrated"], acc_finetuned=float(np.mean(accs)),
                acc_std=float(np.std(accs)) if len(accs) > 1 else None, seeds=[r["seed"] for r in rs],
                finetune_epochs=rs[0]["epochs"], evaluations=m.get("evaluations"),
                allocation_seconds=m.get("allocation_seconds")))
        for ours, other in comparisons(first):
            diff, lo, hi = _common.paired_bootstrap(seeds[ours], seeds[other])
            out.append(_common.row(model=model, tool="secateur", method=f"{ours[0]} vs {other[0]} ({other[1]})",
                                   experiment="bootstrap", target=None, acc_diff=diff, ci_low=lo, ci_high=hi,
                                   decided=bool(lo > 0 or hi < 0)))
    return out


def comparisons(means: dict) -> list[tuple]:
    """The pairs that decide a claim, as (row, variant) keys of ``means`` (seed-0 accuracy by key): the
    best secateur row (by seed 0, as the fine-tune chose it) against Torch-Pruning's best, from scratch
    and distilled; the better automatic allocation (greedy, search) against uniform; the same two
    claims right after the cut (BN recalibrated, no fine-tune); and at equal measured latency, the
    latency-planned model against the MAC-planned one and Torch-Pruning's."""
    pairs = []
    for stage in ("finetuned", "recalibrated"):   # after the same fine-tune, and right after the cut
        ours, theirs, automatic, uniform = (None if r is None else (r, stage) for r in q.deciding(
            {row: acc for (row, variant), acc in means.items() if variant == stage}))
        if ours:
            pairs += [(ours, k) for k in (theirs, (ours[0], "scratch"), (ours[0], "distilled")) if k in means]
        if automatic and uniform:   # automatic allocation against uniform
            pairs.append((automatic, uniform))
    for row, variant in means:
        if row.endswith("/secateur-latency"):
            prefix = row.rsplit("/", 1)[0]
            others = [f"{prefix}/{t}" for t in ("secateur-macs", "torch-pruning")] + \
                [r for r, v in means if v == variant and r.startswith(f"{prefix}/secateur-latency-max")]   # ablation
            pairs += [((row, variant), (other, variant)) for other in others if (other, variant) in means]
    return pairs


def report(rows, out, seconds) -> None:
    _common.print_table([r for r in rows if r.get("experiment") == "cut"],
                        [("model", "model"), ("target", lambda r: r["target"]["macs"]), ("tool", "tool"),
                         ("method", "method"), ("MACs", "macs_ratio"), ("base", "acc_base"),
                         ("cut", "acc_pruned"), ("recalibrated", "acc_recalibrated"), ("error", "error")],
                        title="1. Accuracy right after the cut, without and with BN recalibration (no fine-tune)")
    _common.print_table([r for r in rows if r.get("experiment") == "finetune"],
                        [("model", "model"), ("tool", "tool"), ("row", "method"), ("MACs", "macs_ratio"),
                         ("latency", "latency_ratio"), ("cut", "acc_pruned"), ("recal", "acc_recalibrated"),
                         ("tuned", "acc_finetuned"),
                         ("± std", "acc_std"), ("seeds", lambda r: len(r["seeds"])), ("evals", "evaluations"),
                         ("alloc s", "allocation_seconds")],
                        title=f"2-3. A quarter of the MACs, {q.FINETUNE.lr} lr fine-tune; from scratch; distilled")
    _common.print_table([r for r in rows if r.get("experiment") == "bootstrap"],
                        [("model", "model"), ("comparison", "method"), ("difference", "acc_diff"),
                         ("95% CI low", "ci_low"), ("high", "ci_high"), ("decided", "decided")],
                        title="Paired bootstrap over the 10,000 test images and each row's seeds")
    print(f"\n{seconds / 60:.1f} min; written to {out}")


if __name__ == "__main__":
    main(sys.argv)

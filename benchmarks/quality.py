"""Accuracy that survives little or no fine-tuning, on the committed Fashion-MNIST baselines (VGG-8,
ResNet-56), at half and at a quarter of the MACs, Torch-Pruning 1.6.1 side by side at the same MACs.

    python benchmarks/quality.py --only cut     # 1. right after the cut, without and with BN recalibration
    python benchmarks/quality.py                # every section

1. *cut*: every criterion (Random, L1, APoZ, Taylor, Taylor-2019, ThiNet, LASSO) and Torch-Pruning's
   L1, BN-scale and Taylor importances, each pruned once to the target; test accuracy of the model as
   cut, and after ``secateur.recalibrate_bn`` on 20 training batches of 128 (the same for every row,
   Torch-Pruning's models included: recalibration is the tool's, not the criterion's).

Accuracy is on the full 10,000-image test split; calibration data (data criteria, ThiNet, LASSO) is
1,000 training images. Each finished section is kept under benchmarks/.cache/full/ and skipped by a
rerun (delete its rows file to measure again). Intra-op threads: $OMP_NUM_THREADS if set, else 2.
"""
from __future__ import annotations

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import sys
import time

from datadriven import SEED, makers, measured, prepare, recalibrated_acc
from secateur.methods import record
from secateur.train import evaluate
from training import X, baseline

TARGETS = (0.5, 0.25)
OURS = ("random", "l1", "apoz", "taylor", "taylor2019", "thinet", "lasso")
THEIRS = ("l1", "bnscale", "taylor")
SECTIONS = ("cut",)


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
    args = ap.parse_args(argv[1:])
    started = time.perf_counter()
    mode, B, ck, name, train, test, calib = prepare(False, "quality")
    rows = []
    for model in ("vgg8", "resnet56"):
        base = baseline(model, mode, train, test, B["base"])
        acc = evaluate(base, test)["acc"]
        print(f"baseline {model}: test acc {acc:.4f}", flush=True)
        if "cut" in (args.only or SECTIONS):
            rows += _common.stage_rows(ck / f"quality-cut-{model}.rows.json",
                                       lambda: cut(model, base, acc, calib, train, test))
        out = _common.write_results(name, rows, argv, keep_others=True)
    report(rows, out, time.perf_counter() - started)


def report(rows, out, seconds) -> None:
    _common.print_table([r for r in rows if r.get("experiment") == "cut"],
                        [("model", "model"), ("target", lambda r: r["target"]["macs"]), ("tool", "tool"),
                         ("method", "method"), ("MACs", "macs_ratio"), ("base", "acc_base"),
                         ("cut", "acc_pruned"), ("recalibrated", "acc_recalibrated"), ("error", "error")],
                        title="1. Accuracy right after the cut, without and with BN recalibration (no fine-tune)")
    print(f"\n{seconds / 60:.1f} min; written to {out}")


if __name__ == "__main__":
    main(sys.argv)

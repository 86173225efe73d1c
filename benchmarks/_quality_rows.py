"""The fine-tuned rows of benchmarks/quality.py, in two phases that may run on different machines.

*prepare* (CPU, here): every row's pruned model at a quarter of the MACs, saved with
``secateur.save`` under a folder with a ``manifest.json`` (MACs, params, accuracy right after the cut
and after BN recalibration, what choosing the allocation cost). *finetune* (any device; the GPU when
there is one): each model fine-tuned the same way, then the rows that decide a claim again with more
seeds, the best row trained from scratch, and the best row with distillation; every row keeps the
per-image correctness on the test split (hex of packed bits) for the paired bootstrap and its
prepared model's manifest entry (``prepared``), so that the rows file alone makes the report. Rows are
written after each one, and a rerun skips the rows already in the file.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import _common
import secateur
from datadriven import SEED, layerwise, recalibrated_acc, tp_at_macs
from secateur.criteria import L1
from secateur.methods import allocate, record, sensitivity, sensitivity_ratios
from secateur.train import Distill, Optim, fit
from training import X

TARGET = 0.25
SECATEUR_ROWS = ("uniform", "global", "sensitivity", "greedy", "search", "thinet", "lasso")
TP_ROWS = ("l1", "bnscale", "taylor")
FINETUNE = Optim(lr=0.01, weight_decay=1e-4)     # every row, as in datadriven.py and training.py
SCRATCH = Optim(lr=0.1, weight_decay=5e-4)       # the baselines' own schedule
SEEDS = (0, 1, 2)


def _scored(train, batches: int = 8) -> list:
    torch.manual_seed(SEED)
    return [b for _, b in zip(range(batches), train)]


def _sensitivity_at(base, train, macs0) -> tuple[nn.Module, dict]:
    """Li et al.'s ratios (largest rate within a tolerance, per layer) with the tolerance bisected
    until the model keeps at most TARGET of the MACs; curves scored on training batches, no recal."""
    curves = sensitivity(base, X, _scored(train), progress=False)
    lo, hi = 0.0, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        ratios = sensitivity_ratios(curves, tolerance=mid)
        small = secateur.prune(base, X, L1(), amount=ratios, progress=False) if ratios else base
        lo, hi = (lo, mid) if record("s", small, X)["macs"] <= TARGET * macs0 else (mid, hi)
    ratios = sensitivity_ratios(curves, tolerance=hi)
    return secateur.prune(base, X, L1(), amount=ratios, progress=False), {"tolerance": hi}


def _make(row: str, base, calib, train, macs0) -> tuple[nn.Module, dict]:
    tool, method = row.split("/")
    if tool == "torch-pruning":
        model, ratio = tp_at_macs(base, method, calib, macs0, TARGET)
        return model, {"pruning_ratio": ratio}
    if method in ("thinet", "lasso"):
        return layerwise(method, base, calib, macs=TARGET), {}
    if method == "sensitivity":
        return _sensitivity_at(base, train, macs0)
    if method in ("greedy", "search"):
        found = allocate(base, X, L1(), macs=TARGET, loader=train, strategy=method, progress=False)
        return (secateur.prune(base, X, L1(), amount=found.layers, progress=False),
                {"evaluations": found.evaluations, "allocation_seconds": found.seconds})
    return secateur.prune(base, X, L1(), target_macs=TARGET, global_ranking=method == "global", progress=False), {}


def prepare(name: str, base, calib, train, test, folder: Path, only=None) -> list[dict]:
    """Prune ``base`` for every row (``only``: these rows, e.g. "secateur/greedy") and save the models
    under ``folder/name``; returns the manifest."""
    path = folder / name / "manifest.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    done = {r["row"] for r in rows}
    b = record("baseline", base, X)
    for row in [f"secateur/{m}" for m in SECATEUR_ROWS] + [f"torch-pruning/{m}" for m in TP_ROWS]:
        if row in done or (only and row not in only):
            continue
        start = time.perf_counter()
        small, extra = _make(row, base, calib, train, b["macs"])
        p = record("pruned", small, X, test)
        add_to_manifest(folder, name, row, small, dict(
            macs_ratio=p["macs"] / b["macs"], params_ratio=p["params"] / b["params"], acc_pruned=p["acc"],
            acc_recalibrated=recalibrated_acc(small, train, test), seconds=time.perf_counter() - start, **extra))
    return json.loads(path.read_text())


def add_to_manifest(folder: Path, name: str, row: str, small: nn.Module, fields: dict) -> None:
    """Save ``small`` as row ``row`` of model ``name`` (checked by loading it back the way finetune
    will) and add its fields to ``folder/name/manifest.json``, replacing an earlier row of that name."""
    secateur.save(small.cpu(), folder / name / row.replace("/", "-"), overwrite=True)
    again = load(folder, name, row)
    x = torch.randn(4, *X.shape[1:])
    torch.testing.assert_close(again.eval()(x), small.eval()(x))
    path = folder / name / "manifest.json"
    rows = [r for r in json.loads(path.read_text()) if r["row"] != row] if path.exists() else []
    _common.dump_json(path, rows + [dict(row=row, **fields)], indent=1)
    print(f"kept {name} {row}: {fields}", flush=True)


def load(folder: Path, name: str, row: str) -> nn.Module:
    fresh = secateur.models.create_model(name, in_channels=1)
    return secateur.load(folder / name / row.replace("/", "-"), model=fresh)


def correctness(model: nn.Module, test) -> np.ndarray:
    device = next(model.parameters()).device
    out = []
    with torch.no_grad(), secateur.forward.eval_mode(model):
        for x, y in test:
            out.append((model(x.to(device)).argmax(1).cpu() == y).numpy())
    return np.concatenate(out)


def _pack(ok: np.ndarray) -> str:
    return np.packbits(ok).tobytes().hex()


def unpack(hex_bits: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_bits), np.uint8))[:n].astype(bool)


def _fresh(model: nn.Module) -> nn.Module:
    """The same architecture, every parameter and statistic re-initialised (Liu et al.'s control)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return model


def deciding(seed0: dict[str, float]) -> tuple[str | None, str | None, str | None, str | None]:
    """The rows that decide a claim, from each fine-tuned row's seed-0 accuracy (by row name): the best
    secateur row, Torch-Pruning's best, the better automatic allocation (greedy, search) and uniform;
    None where there is none."""
    def best(names) -> str | None:
        return max((n for n in names if n in seed0), key=seed0.__getitem__, default=None)
    return (best(n for n in seed0 if n.startswith("secateur/")),
            best(n for n in seed0 if n.startswith("torch-pruning/")),
            best(("secateur/greedy", "secateur/search")), best(("secateur/uniform",)))


def finetune(folder: Path, names, base_of, train, test, out: Path, epochs: int, scratch_epochs: int,
             deadline: float, checkpoints: Path, first_only: bool = False, only: list[str] | None = None,
             seeds: int = len(SEEDS), recalibrate=None) -> list[dict]:
    """Fine-tune every prepared row (seed 0), then (unless ``first_only``) distillation for each
    model's best secateur row, the seeds 1 to ``seeds`` - 1 of the rows that decide a claim (the best
    secateur and Torch-Pruning rows, the better automatic allocation and uniform), and the best secateur
    architecture trained from scratch for ``scratch_epochs`` (seeds 0-2), until
    ``deadline`` (time.time()); a row stopped part-way resumes from its checkpoint under ``checkpoints``;
    ``only``: the prepared rows matching these patterns (fnmatch); ``recalibrate``: also each prepared
    row's model as ``recalibrate(model)`` leaves it, not fine-tuned (variant "recalibrated", 0 epochs)."""
    rows = json.loads(out.read_text()) if out.exists() else []
    done = {(r["model"], r["row"], r["variant"], r["seed"]) for r in rows}

    def run(name, row, variant, seed, make):
        if (name, row, variant, seed) in done or time.time() > deadline:
            return
        start = time.perf_counter()
        torch.manual_seed(seed)                    # a from-scratch row's initial weights too
        model, optim, n, callbacks = make()
        ck = checkpoints / "-".join(str(k).replace("/", "-") for k in (name, row, variant, seed))
        try:   # a long row (from scratch) resumes where a stopped run left it ("seconds": this run's part)
            hist = fit(model, train, epochs=n, optim=optim, seed=seed, progress=False, callbacks=callbacks,
                       checkpoint=ck, resume=True) if n else []
        except Exception as e:   # a row that fails is reported, the others still run
            print(f"finetune {name} {row} {variant} seed {seed}: fails: {_common.error_line(e)}", flush=True)
            return
        ok = correctness(model, test)
        made = next(m for m in manifests[name] if m["row"] == row)   # the row carries how it was made
        rows.append(dict(model=name, row=row, variant=variant, seed=seed, epochs=n, acc=float(ok.mean()),
                         train_loss=hist[-1]["loss"] if hist else None, seconds=time.perf_counter() - start,
                         correct=_pack(ok), prepared={k: v for k, v in made.items() if k != "row"}))
        _common.dump_json(out, rows, indent=1)
        shutil.rmtree(ck, ignore_errors=True)   # the row is in out now; the checkpoint (if any) was ours
        print(f"finetune {name} {row} {variant} seed {seed}: {ok.mean():.4f} ({time.perf_counter() - start:.0f} s)",
              flush=True)

    def chosen(name):
        return deciding({r["row"]: r["acc"] for r in rows
                         if r["model"] == name and r["variant"] == "finetuned" and r["seed"] == 0})

    manifests = {n: json.loads((folder / n / "manifest.json").read_text()) for n in names}
    for name in names:
        for m in manifests[name]:
            if only and not any(fnmatch.fnmatch(m["row"], p) for p in only):
                continue
            run(name, m["row"], "finetuned", 0, lambda: (load(folder, name, m["row"]), FINETUNE, epochs, []))
            if recalibrate is not None:   # no fine-tune: the manifest's acc_recalibrated, image by image
                run(name, m["row"], "recalibrated", 0, lambda: (recalibrate(load(folder, name, m["row"])), None, 0, []))
    if first_only:
        return rows
    for name in names:
        decide = chosen(name)
        ours = decide[0]
        if ours is None:
            continue
        run(name, ours, "distilled", 0,
            lambda: (load(folder, name, ours), FINETUNE, epochs, [Distill(base_of(name))]))
        for seed in range(1, seeds):
            for row in dict.fromkeys(decide):
                if row is not None:
                    run(name, row, "finetuned", seed, lambda: (load(folder, name, row), FINETUNE, epochs, []))
    for seed in SEEDS:
        for name in names:
            ours = chosen(name)[0]
            if ours is not None:
                run(name, ours, "scratch", seed,
                    lambda: (_fresh(load(folder, name, ours)), SCRATCH, scratch_epochs, []))
    return rows

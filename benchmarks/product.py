"""The README's headline table: every method at half the MACs on VGG-8 and ResNet-56 (Fashion-MNIST),
same fine-tune, with what a user ships: PyTorch and ONNX Runtime latency, file sizes, int8; and the
end-to-end wall time of ``secateur compress``.

    python benchmarks/product.py --quick   # 6,000 training images, 1 fine-tune epoch, the demo recipe
    python benchmarks/product.py           # all 60,000, 3 epochs, every shipped recipe (hours on 2 CPU cores)

Baselines, data split, calibration draw, seed and fine-tune budget are datadriven.py's (its BUDGETS),
and so are the fine-tune checkpoint names (benchmarks/.cache/<mode>/dd-<model>-<tool>-<method>): a
row that datadriven.py already fine-tuned resumes from its checkpoint instead of training again
(the loaded weights must fit the freshly pruned architecture, and the recomputed accuracy is compared
with the one the checkpoint's history holds). Latency: 1 intra-op thread, base and pruned model
timed interleaved (``_common.interleaved_latency``), contiguous memory format, median of 10 and IQR;
ONNX Runtime: 1 thread, batch 1, ``ort_latency`` (median of 20) alternated 3x between base and
pruned, median. Accuracy on the full 10,000-image test split.
"""
from __future__ import annotations

import _passive  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch starts OpenMP)
import _common

import argparse
import importlib.metadata
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import torch

import secateur
from secateur.io import onnx as ox
from secateur.methods import record
from secateur.train import evaluate, fit
from datadriven import SEED, SGD, makers, prepare
from training import CACHE, X, baseline

MODELS = ("vgg8", "resnet56")
SECATEUR = ("l1", "taylor", "thinet", "lasso")
TP = ("l1", "taylor")
ONNX_TOL = dict(rtol=1e-3, atol=1e-4)    # what `secateur compress` checks its exports with
CLI = [sys.executable, "-m", "secateur.cli"]


def ort_pair(base_path: Path, small_path: Path, rounds: int = 3) -> tuple[float, float]:
    """ONNX Runtime batch-1 ms (1 thread) of both files, alternated ``rounds`` times; medians."""
    times = {base_path: [], small_path: []}
    for _ in range(rounds):
        for p in times:
            times[p].append(ox.ort_latency(p, X, threads=1))
    return statistics.median(times[base_path]), statistics.median(times[small_path])


def export(model, path: Path, images: torch.Tensor) -> float:
    """Export to ONNX (dynamic batch) and check it against PyTorch in ONNX Runtime on real ``images``
    (an all-zero input would leave most of the network's arithmetic unchecked); max relative error."""
    ox.export_onnx(model, X, path, overwrite=True)
    return ox.check_onnx(path, model, images, **ONNX_TOL)


def safetensors_bytes(model) -> int:
    """Size of model.safetensors as secateur.save writes it (a real file, not an estimate)."""
    with tempfile.TemporaryDirectory() as tmp:
        return (secateur.save(model, Path(tmp) / "m") / "model.safetensors").stat().st_size


def headline(name, base, acc_base, calib, train, test, B, ck) -> list[dict]:
    onnx_dir = ck / "product-onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    base = _common.dense(base)
    b = secateur.measure(base, X, latency=False)
    base_onnx = onnx_dir / f"{name}-base.onnx"
    images = next(iter(test))[0][:64]
    base_err = export(base, base_onnx, images)
    base_bytes = safetensors_bytes(base)
    rows = []
    for tool, method, make in makers(base, calib, b.macs, SECATEUR, TP):
        start = time.perf_counter()
        info = dict(model=name, tool=tool, method=method, experiment="headline", target={"macs": 0.5},
                    acc_base=acc_base, finetune_epochs=B["finetune"], seed=SEED, batch=64)
        try:
            small, extra = make()
            pruned_acc = record("pruned", small, X, test)["acc"]
            ft = ck / f"dd-{name}-{tool}-{method}"
            resumed = (ft / "state.json").exists()
            hist = fit(small, train, epochs=B["finetune"], optim=SGD, eval_loader=test, seed=SEED,
                       progress=False, checkpoint=ft, resume=True, compile=B["compile"])
            small = _common.dense(small)
            acc = evaluate(small, test)["acc"]
            s = secateur.measure(small, X, latency=False)
            t1, t64 = (_common.pair_latency(base, small, torch.randn(n, *X.shape[1:], generator=torch.Generator()
                                                                     .manual_seed(SEED)), threads=1) for n in (1, 64))
            path = onnx_dir / f"{name}-{tool}-{method}.onnx"
            err = export(small, path, images)
            ort_b, ort_s = ort_pair(base_onnx, path)
            rows.append(_common.row(
                **info, macs_ratio=s.macs / b.macs, params_ratio=s.params / b.params,
                latency_ratio=t64["s"][0] / t64["b"][0], acc_pruned=pruned_acc, acc_finetuned=acc,
                acc_finetuned_history=hist[-1]["eval_acc"], finetune_resumed=resumed, finetune_checkpoint=ft.name,
                pt_b1_ms_before=t1["b"][0], pt_b1_ms_after=t1["s"][0], pt_b1_iqr_ms=[t1["b"][1], t1["s"][1]],
                pt_b64_ms_before=t64["b"][0], pt_b64_ms_after=t64["s"][0], pt_b64_iqr_ms=[t64["b"][1], t64["s"][1]],
                latency_ratio_b1=t1["s"][0] / t1["b"][0], ort_b1_ms_before=ort_b, ort_b1_ms_after=ort_s,
                ort_latency_ratio=ort_s / ort_b, ort_vs_pt_b1=ort_s / t1["s"][0], onnx_max_rel_err=err,
                onnx_max_rel_err_base=base_err, onnx_bytes=path.stat().st_size, onnx_bytes_base=base_onnx.stat().st_size,
                safetensors_bytes=safetensors_bytes(small), safetensors_bytes_base=base_bytes,
                measure_bytes=s.bytes, onnx_file=str(path.relative_to(CACHE.parent.parent)), **extra))
        except Exception as e:  # a failing method is a row, not a crash
            rows.append(_common.row(**info, ok=False, error=_common.error_line(e)))
        r = rows[-1]
        print(f"{name} {tool} {method}: MACs {_common.fmt(r['macs_ratio'])} tuned {_common.fmt(r['acc_finetuned'])}"
              f"{' (resumed)' if r.get('finetune_resumed') else ''} ({time.perf_counter() - start:.0f} s)"
              f"{'' if r['ok'] else ' ' + r['error']}", flush=True)
    best = max((r for r in rows if r["tool"] == "secateur" and r["ok"]), key=lambda r: r["acc_finetuned"], default=None)
    if best is not None:
        int8(best, CACHE.parent.parent / best["onnx_file"], calib, test)
    return rows


def int8(row: dict, path: Path, calib, test) -> None:
    """Static (QDQ, per-channel, MinMax on the calibration draw) int8 copy of ``path``; its size,
    accuracy and batch-1 latency next to the float32 file's, added to ``row``."""
    q = path.with_name(path.stem + "-int8.onnx")
    try:
        ox.quantize_int8(path, q, calibration=calib, overwrite=True)
        row.update(int8_bytes=q.stat().st_size, int8_acc=ox.ort_accuracy(q, test), onnx_acc=ox.ort_accuracy(path, test),
                   int8_ort_b1_ms=ox.ort_latency(q, X, threads=1), int8_fp32_ort_b1_ms=ox.ort_latency(path, X, threads=1))
    except Exception as e:
        row.update(int8_error=_common.error_line(e))
    print(f"int8 {row['model']} {row['method']}: {row.get('int8_bytes')} B acc {_common.fmt(row.get('int8_acc'))} "
          f"(fp32 ORT {_common.fmt(row.get('onnx_acc'))}) {row.get('int8_error') or ''}", flush=True)


def compress(mode: str, keep) -> list[dict]:
    """Wall time of `secateur compress RECIPE` in a subprocess for every shipped recipe (quick: the demo)."""
    names = ["demo"] if mode == "quick" else subprocess.run(CLI + ["recipes"], capture_output=True, text=True,
                                                            check=True).stdout.split()
    return [r for name in names for r in _common.stage_rows(keep and keep(f"compress-{name}"),
                                                            lambda: [compress_one(name, mode)])]


def compress_one(name: str, mode: str) -> dict:
    """One recipe from an empty --out directory (--force only replaces a finished run; this times a fresh one)."""
    out = CACHE / mode / "compress" / name
    shutil.rmtree(out, ignore_errors=True)
    info = dict(tool="secateur", method=f"compress {name}", experiment="compress", recipe=name, seed=0)
    start = time.perf_counter()
    p = subprocess.run(CLI + ["compress", name, "--out", str(out), "--no-progress", "--force"],
                       capture_output=True, text=True)
    wall = time.perf_counter() - start
    try:
        if p.returncode:
            raise RuntimeError((p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1])
        s = json.loads((out / "summary.json").read_text())
        recs = s["records"]
        first, last = recs[0], recs[-1]
        toml = tomllib.loads(Path(s["recipe"]).read_text())
        r = _common.row(
            **info, model=toml["model"]["arch"], target={k: v for k, v in toml["method"].items() if k != "name"},
            wall_s=wall, acc_base=s["accuracy"]["before"], acc_finetuned=s["accuracy"]["after"],
            macs_ratio=last["macs"] / first["macs"], params_ratio=last["params"] / first["params"],
            finetune_epochs=toml.get("finetune", {}).get("epochs", 0), last_stage=last["stage"])
    except Exception as e:
        r = _common.row(**info, wall_s=wall, ok=False, error=_common.error_line(e))
    print(f"compress {name}: {wall:.0f} s acc {_common.fmt(r['acc_finetuned'])} {r['error'] or ''}", flush=True)
    return r


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv[1:])
    started = time.perf_counter()
    mode, B, ck, name, train, test, calib = prepare(args.quick, "product")
    print(f"seed {SEED}; threads {torch.get_num_threads()} (timings: 1); mode {mode}; onnxruntime "
          f"{importlib.metadata.version('onnxruntime')}", flush=True)
    keep = None if args.quick else lambda stage: ck / f"product-{stage}.rows.json"   # full runs resume
    rows = []
    for model in MODELS:
        base = baseline(model, mode, train, test, B["base"])
        acc = evaluate(base, test)["acc"]
        print(f"baseline {model}: test acc {acc:.4f}", flush=True)
        rows += _common.stage_rows(keep and keep(f"headline-{model}"),
                                   lambda: headline(model, base, acc, calib, train, test, B, ck))
        _common.write_results(name, rows, argv)
    rows += compress(mode, keep)
    out = _common.write_results(name, rows, argv)
    report(rows, mode, out, time.perf_counter() - started)


def report(rows, mode, out, seconds) -> None:
    head = [r for r in rows if r.get("experiment") == "headline"]
    bases = {r["model"]: r["safetensors_bytes_base"] for r in head if r["ok"]}
    kb = lambda key: lambda r: None if r.get(key) is None else r[key] / 1024  # noqa: E731
    _common.print_table(head, [
        ("model", "model"), ("tool", "tool"), ("method", "method"), ("MACs", "macs_ratio"), ("params", "params_ratio"),
        ("pruned", "acc_pruned"), ("tuned", "acc_finetuned"), ("pt b1 ms", "pt_b1_ms_before"), ("→", "pt_b1_ms_after"),
        ("pt b64 ms", "pt_b64_ms_before"), ("→ ", "pt_b64_ms_after"), ("b64 ratio", "latency_ratio"),
        ("ort b1 ms", "ort_b1_ms_before"), (" →", "ort_b1_ms_after"), ("ort ratio", "ort_latency_ratio"),
        ("ort÷pt b1", "ort_vs_pt_b1"), ("KiB", kb("safetensors_bytes")), ("error", "error")],
        title=f"1. Half the MACs, same fine-tune ({mode}); latency 1 thread, before → after; safetensors KiB "
              f"(base: {', '.join(f'{m} {v / 1024:.0f}' for m, v in bases.items())})")
    _common.print_table([r for r in head if "int8_bytes" in r or "int8_error" in r], [
        ("model", "model"), ("method", "method"), ("fp32 KiB", kb("onnx_bytes")), ("int8 KiB", kb("int8_bytes")),
        ("PyTorch acc", "acc_finetuned"), ("ORT fp32 acc", "onnx_acc"), ("int8 acc", "int8_acc"),
        ("fp32 ms", "int8_fp32_ort_b1_ms"), ("int8 ms", "int8_ort_b1_ms"), ("error", "int8_error")],
        title="2. int8 (static QDQ, calibrated) ONNX of the best secateur row, ONNX Runtime batch 1, 1 thread")
    _common.print_table([r for r in rows if r.get("experiment") == "compress"], [
        ("recipe", "recipe"), ("model", "model"), ("wall s", "wall_s"), ("MACs", "macs_ratio"),
        ("params", "params_ratio"), ("base", "acc_base"), ("final", "acc_finetuned"), ("error", "error")],
        title="3. secateur compress end to end (subprocess, fresh --out)")
    print(f"\n{mode}: {seconds / 60:.1f} min; written to {out}")


if __name__ == "__main__":
    main(sys.argv)

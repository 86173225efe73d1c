"""``secateur compress RECIPE``: load or train the model, prune by the recipe's method, fine-tune,
measure, save, export and report; rerunning the same command resumes where it stopped.

Output directory (``--out``, default ``runs/<recipe name>``)::

    baseline/         the baseline's training checkpoint (when no weights were given)
    method/           the method's stage checkpoints (sparsity training, fine-tunes)
    model/            the result: model.safetensors + pruning.json (secateur.save)
    records.json      what the method recorded per stage (params, MACs, accuracy, ...)
    model.onnx ...    exports; report/ the report; summary.json is written last and marks a finished run
    recipe.toml       the recipe as run (defaults filled in): measure/export/report need nothing else
    .secateur-run.json  marks the directory as secateur's, with each stage's recipe fingerprint

A directory secateur did not make is never written to; a rerun redoes the stages whose recipe
sections changed and reuses the rest (see :mod:`._rundir`).
"""
from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .. import methods, runtimes
from ..data import calibration, cifar, fashion_mnist, image_folder
from ..forward import as_inputs, with_batch
from ..io import atomic_file, load, save, save_sparse
from ..methods import Result, StageRecord, record
from ..surgery import low_rank, low_rank_ranks
from ..train import evaluate, fit
from ._errors import UsageError
from ._models import build, load_weights
from ._recipe import Recipe, dump
from ._rundir import prepare

def datasets(recipe: Recipe):
    d = recipe.data
    if d["dataset"] == "fashion-mnist":
        train, test = fashion_mnist("train"), fashion_mnist("test")
    elif not d["path"]:
        raise UsageError(f"{recipe.path.name}: [data] dataset={d['dataset']!r} needs path = \"...\"")
    elif d["dataset"] == "cifar":
        train, test = cifar(d["path"], "train"), cifar(d["path"], "test")
    else:
        train, test = image_folder(d["path"], "train", d["image_size"]), image_folder(d["path"], "val", d["image_size"])
    if d["rgb"]:
        if not hasattr(train, "as_rgb"):
            raise UsageError(f"{recipe.path.name}: [data] rgb = true works for fashion-mnist only")
        train, test = train.as_rgb(), test.as_rgb()
    return train, test


def loaders(recipe: Recipe):
    train, test = datasets(recipe)
    d = recipe.data
    calib = calibration(train, min(d["calibration"], len(train)), seed=d["seed"])
    g = torch.Generator().manual_seed(d["seed"])
    if d["subset"]:
        train = Subset(train, torch.randperm(len(train), generator=g)[:d["subset"]].tolist())
    shown = Subset(test, torch.randperm(len(test), generator=g)[:d["test_subset"]].tolist()) if d["test_subset"] else test
    return (DataLoader(train, batch_size=d["batch_size"], shuffle=True, drop_last=len(train) > d["batch_size"]),
            DataLoader(shown, batch_size=256), calib, test)


def extras(recipe: Recipe) -> None:
    """The optional packages the recipe needs, imported before any work (a missing one is one line)."""
    wanted = [("[export] onnx = true", "onnxruntime")] if recipe.export["onnx"] else []
    if getattr(recipe.config, "latency", None) is not None:
        wanted.append(("[method] latency", recipe.config.runtime))
    wanted += [("[export] runtimes", name) for name in report_runtimes(recipe)]
    for why, name in wanted:   # the runtimes a run exports to, measures or reports on
        try:
            runtimes.backend(name)
        except ValueError as e:
            raise UsageError(f"{recipe.path.name}: {why}: {e}") from None
    need_matplotlib("the report's plots need")


def report_runtimes(recipe: Recipe) -> list[str]:
    """The runtimes the report times: [export] runtimes, where "installed" (the default) is every
    deployment runtime that imports here."""
    names = recipe.export["runtimes"]
    return runtimes.installed(exports=True) if names == "installed" else list(names)


def need_matplotlib(what: str) -> None:
    """One line naming the extra when matplotlib does not import; ``what``: "the report's plots need"."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as e:
        raise UsageError(f"{what} matplotlib, which does not import ({e}): pip install 'secateur[report]'") from None


def run(recipe: Recipe, out: Path, *, force: bool = False, progress: bool = True, compile: bool = False) -> dict:
    extras(recipe)                                       # everything checked before any work
    train, test, calib, test_set = loaders(recipe)
    shape = tuple(test_set[0][0].shape)
    x = torch.zeros(1, *shape)
    num_classes = recipe.model["num_classes"] or test_set.num_classes
    if num_classes < test_set.num_classes:
        raise UsageError(f"{recipe.path.name}: [model] num_classes = {num_classes}, but the data has "
                         f"{test_set.num_classes} classes: set num_classes = {test_set.num_classes} or leave it out")
    for line in prepare(out, recipe.sections, force=force):   # refuses a directory that is not secateur's
        print(line, file=sys.stderr)
    with atomic_file(out / "recipe.toml", overwrite=True) as tmp:   # the run is self-contained
        tmp.write_text(dump(recipe.sections))
    how = dict(progress=progress, compile=compile)      # how every training stage runs

    def fresh() -> nn.Module:
        return build(recipe.model["arch"], num_classes=num_classes, in_channels=shape[0])

    torch.manual_seed(recipe.data["seed"])        # the baseline's initial weights, reproducibly
    base = fresh()
    if recipe.model["weights"]:
        load_weights(base, recipe.model["weights"])
    else:
        fit(base, train, epochs=recipe.baseline_epochs, optim=recipe.baseline, eval_loader=test,
            checkpoint=out / "baseline", resume=True, **how)
    base.eval()
    if (out / "model").exists() and (out / "records.json").exists():
        small = load(out / "model", model=fresh())       # factor pairs included: pruning.json lists them
        records = [StageRecord.from_json(r) for r in json.loads((out / "records.json").read_text())]
    else:
        result = _method(recipe, base, x, train, test, calib, out / "method", how)
        small, records = result.model, result.records
        write_json(out / "history.json", result.history)
        if recipe.lowrank["energy"]:
            small = low_rank(small, energy=recipe.lowrank["energy"], min_features=recipe.lowrank["min_features"])
            records.append(record("low-rank", small, x, test, ranks=low_rank_ranks(small)))
        save(small, out / "model", overwrite=True)
        if result.masks is not None:   # weight-level pruning: also stored sparse
            save_sparse(small, out / "model-sparse", values=recipe.config.values, overwrite=True)
        write_json(out / "records.json", [r.to_json(drop=("gammas",)) for r in records])
    small.eval()
    history = json.loads((out / "history.json").read_text()) if (out / "history.json").exists() else []
    summary = _finish(recipe, base, small, x, test, calib, records, history, out)
    write_json(out / "summary.json", summary)
    return summary


def _method(recipe: Recipe, base, x, train, test, calib, ck: Path, how: dict) -> Result:
    ft = recipe.sections["finetune"]
    return methods.compress(base, recipe.config, example_inputs=x, train_loader=train, calibration=calib,
                            eval_loader=test, checkpoint=ck, resume=True, recalibrate=ft["recalibrate"],
                            distill=ft["distill"], **how)


def stages_table(records: Sequence[Mapping]) -> str:
    """Params, MACs and accuracy of each evaluated stage (ratios to the first), as aligned text; the
    layer-wise methods' per-layer records (no accuracy) are left to records.json."""
    from ..measure.stats import si_count
    records = [r for r in records if r.get("acc") is not None] or records
    first = records[0]
    lines = [["stage", "params", "MACs", "accuracy"]]
    for i, r in enumerate(records):
        ratio = (lambda k: f" ({r[k] / first[k]:.2f}x)" if i and first[k] else "")
        lines.append([r["stage"], si_count(r["params"]) + ratio("params"), si_count(r["macs"]) + ratio("macs"),
                      "-" if r.get("acc") is None else f"{r['acc']:.2%}"])
    widths = [max(len(line[c]) for line in lines) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in
                               enumerate(zip(line, widths))).rstrip() for line in lines)


def _finish(recipe: Recipe, base, small, x, test, calib, records, history, out: Path) -> dict:
    acc = {"before": evaluate(base, test)["acc"], "after": evaluate(small, test)["acc"]}
    extra = {}
    names = report_runtimes(recipe)
    if recipe.export["onnx"]:
        extra = _export(recipe, base, small, x, test, calib, out, timed="onnxruntime" in names)
    extra.update(_runtimes(names, base, small, x, out))
    from ..report import write_report
    write_report(out / "report", before=base, after=small, example_inputs=x, records=records, accuracy=acc,
                 history=history or None,
                 onnx=extra or None, title=f"secateur compress {recipe.path.stem}", overwrite=True,
                 threads=1)   # like every runtime's rows: one thread, the serving case at batch 1
    return {"recipe": str((out / "recipe.toml").resolve()), "source": str(recipe.path.resolve()), "method": recipe.method, "accuracy": acc,
            "input_shape": list(x.shape[1:]), "num_classes": int(small(x).shape[1]),
            "records": [r.to_json(drop=("gammas",)) for r in records],
            "files": sorted(p.name for p in out.iterdir())}


def _export(recipe: Recipe, base, small, x, test, calib, out: Path, timed: bool) -> dict:
    """ONNX files of the baseline and the result (checked against PyTorch in ONNX Runtime), and with
    [export] fp16/int8 their converted copies; report rows are (baseline, result) pairs. ``timed``:
    ONNX Runtime is among the report's runtimes, whose rows give its latency."""
    from ..io import onnx as ox
    paths = {"before": out / "baseline.onnx", "after": out / "model.onnx"}
    for label, model in (("before", base), ("after", small)):
        ox.export_onnx(model, x, paths[label], overwrite=True)
        ox.check_onnx(paths[label], model, x, rtol=1e-3, atol=1e-4)
    rows = {"ONNX file (MB)": tuple(paths[k].stat().st_size / 1e6 for k in paths)}
    if not timed:   # else the onnxruntime rows at batch 1 and 16 say it
        rows["ONNX Runtime latency, batch 1 (ms)"] = tuple(ox.ort_latency(paths[k], x) for k in paths)
    for kind in ("fp16", "int8"):
        if not recipe.export[kind]:
            continue
        made = {k: p.with_name(p.stem + f"-{kind}.onnx") for k, p in paths.items()}
        for k in paths:
            if kind == "fp16":
                ox.to_fp16(paths[k], made[k], overwrite=True)
            else:
                ox.quantize_int8(paths[k], made[k], calibration=calib, overwrite=True)
        rows[f"{kind} ONNX file (MB)"] = tuple(made[k].stat().st_size / 1e6 for k in made)
        rows[f"{kind} ONNX accuracy"] = tuple(ox.ort_accuracy(made[k], test) for k in made)
    return rows


LATENCY_BATCHES = (1, 16)


def _runtimes(names: list[str], base, small, x, out: Path) -> dict:
    """[export] runtimes (``names``): the baseline and the result on each runtime (checked against
    PyTorch first), median latency at batch 1 and 16 on one thread; their exports under ``runtimes/``."""
    rows = {}
    for name in names:
        for b in LATENCY_BATCHES:
            xb = with_batch(as_inputs(x, torch.device("cpu")), b)
            rows[f"{name} latency, batch {b} (ms)"] = tuple(
                runtimes.prepare(model, xb, name, folder=out / "runtimes" / label).latency()
                for label, model in (("baseline", base), ("model", small)))
    return rows


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (a temporary sibling, then one rename), replacing ``path``."""
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=float))

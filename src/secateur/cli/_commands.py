"""``inspect``, ``measure``, ``profile`` and ``export``: a model (by name, file or saved directory) or a finished run."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .. import models as _models
from ..forward import with_batch
from ..graph import trace
from ..layers import handler_for, is_weighted
from ..io import load
from ..measure import measure as _measure
from ..measure import macs_by_module, table
from ._compress import need_matplotlib, write_json
from ._errors import UsageError
from ._models import build, load_weights
from ._recipe import parse


def _resolve(args) -> tuple[nn.Module, torch.Tensor]:
    """The model and an example input from ``model``/``--arch``/``--weights``/``--input``/``--classes``."""
    target = Path(args.model)
    if (target / "summary.json").is_file():          # a finished compress run
        return run_model(target)
    if target.is_dir():
        if not (target / "pruning.json").is_file():
            raise UsageError(f"{target} is neither a finished compress run (summary.json) nor a saved model "
                             f"(pruning.json)")
        if not args.arch:
            raise UsageError(f"{target} is a saved model: pass --arch (the architecture it was pruned from)")
        arch, weights = args.arch, target
    else:
        arch, weights = args.model, args.weights
    shape = args.input or ((1, 28, 28) if arch in _models.list_models() else (3, 224, 224))
    model = build(arch, num_classes=args.classes, in_channels=shape[0])
    if weights:
        model = load_weights(model, weights)
    return model.eval(), torch.zeros(1, *shape)


def run_model(run: Path) -> tuple[nn.Module, torch.Tensor]:
    """The pruned model of a finished ``compress`` run and its example input."""
    try:
        summary = json.loads((run / "summary.json").read_text())
        source = str(run / "recipe.toml") if (run / "recipe.toml").is_file() else summary["recipe"]
        shape, classes = tuple(int(d) for d in summary["input_shape"]), int(summary["num_classes"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"{run / 'summary.json'} is damaged ({type(e).__name__}: {e}); rerun secateur "
                         f"compress with --force") from None
    recipe = parse(source)
    fresh = build(recipe.model["arch"], num_classes=classes, in_channels=shape[0])
    return load(run / "model", model=fresh).eval(), torch.zeros(1, *shape)


def inspect(args) -> int:
    model, x = _resolve(args)
    print(trace(model, x))
    print()
    print(layer_table(model, x))
    return 0


def layer_table(model: nn.Module, x: torch.Tensor) -> str:
    """Per conv/linear layer: widths, parameters and MACs (torch's FlopCounterMode, MACs = FLOPs / 2)."""
    with torch.no_grad():
        macs_of = macs_by_module(model, x)
    rows = [("layer", "type", "in → out", "params", "MACs")]
    for name, m in model.named_modules():
        if is_weighted(m):
            c_in, c_out, _ = handler_for(m).io(m)
            width = f"{c_in} → {c_out}"
            rows.append((name, type(m).__name__, width, f"{sum(p.numel() for p in m.parameters()):,}",
                         f"{macs_of[name]:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def profile(args) -> int:
    from .. import runtimes
    runtimes.backend(args.runtime)   # a missing runtime is one line, before any work
    if args.plot is not None:
        need_matplotlib("--plot needs")
        if args.plot.exists():
            raise UsageError(f"{args.plot} exists: choose another --plot file")
    model, x = _resolve(args)
    x, = with_batch((x,), args.batch)
    rows, total = runtimes.profile(model, trace(model, x), args.runtime, threads=args.threads)
    print(runtimes.format_profile(rows, total, args.runtime, limit=args.top))
    if args.plot is not None:
        runtimes.plot_profile(rows, args.plot, args.runtime)
        print(f"plot: {args.plot}")
    return 0


def measure(args) -> int:
    model, x = _resolve(args)
    print(table({args.model: _measure(model, x, threads=1)}))
    return 0


def export(args) -> int:
    from ..io import onnx as ox
    run = args.run
    if not (run / "summary.json").is_file():
        raise UsageError(f"{run} is not a finished compress run (no summary.json); run secateur compress first")
    model, x = run_model(run)
    path = run / "model.onnx"
    written = [path if path.exists() and not args.force else ox.export_onnx(model, x, path, overwrite=args.force)]
    err = ox.check_onnx(path, model, x, rtol=1e-3, atol=1e-4)
    if args.fp16:
        written.append(ox.to_fp16(path, run / "model-fp16.onnx", overwrite=args.force))
    if args.int8:
        written.append(ox.quantize_int8(path, run / "model-int8.onnx", overwrite=args.force))
    for p in written:
        print(f"{p}  {Path(p).stat().st_size / 1e6:.2f} MB")
    print(f"ONNX Runtime matches PyTorch: max relative error {err:.2e}")
    return 0


def sensitivity(args) -> int:
    from torch.utils.data import DataLoader, Subset

    from ..data import cifar, fashion_mnist, image_folder
    from ..methods import sensitivity as scan
    from ..methods import sensitivity_ratios
    from ..report import plot_rate_curves
    try:
        rates = tuple(float(r) for r in args.rates.split(","))
    except ValueError:
        raise UsageError(f"--rates {args.rates!r}: give fractions separated by commas, e.g. 0.2,0.5,0.8") from None
    kind, _, folder = args.data.partition(":")
    if kind == "fashion-mnist":
        test = fashion_mnist("test")
    elif kind in ("cifar", "folder") and folder:
        test = cifar(folder, "test") if kind == "cifar" else image_folder(folder, "val")
    else:
        raise UsageError(f"--data {args.data!r}: give fashion-mnist, cifar:FOLDER or folder:FOLDER")
    if (args.out / "ratios.json").exists() and not args.force:
        raise UsageError(f"{args.out} already holds a scan; pass --force to replace it or --out to choose another")
    shape = tuple(test[0][0].shape)
    model = load_weights(build(args.model, num_classes=test.num_classes, in_channels=shape[0]), args.weights).eval()
    loader = DataLoader(Subset(test, range(min(args.images, len(test)))), batch_size=250)
    curves = scan(model, torch.zeros(1, *shape), loader, rates=rates)
    ratios = sensitivity_ratios(curves, tolerance=args.tolerance)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_rate_curves(curves, args.out / "sensitivity.png", baseline=next(iter(curves.values()))[0][1])
    write_json(args.out / "ratios.json", {"model": args.model, "tolerance": args.tolerance, "curves": curves,
                                          "ratios": ratios})
    print(json.dumps(ratios, indent=1))
    print(f"wrote {args.out}/ratios.json and {args.out}/sensitivity.png; use them with "
          f"secateur.prune(model, x, L1(), amount=ratios) or a recipe's [method] ratios = \"...\"")
    return 0

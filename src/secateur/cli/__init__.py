"""The ``secateur`` command: thin subcommands over the library.

    secateur compress slimming-vgg              # a shipped recipe (or a path to your own .toml)
    secateur inspect resnet18 --input 3,224,224 # channel groups, frozen ones and why, per-layer params/MACs
    secateur measure runs/slimming-vgg          # params, MACs, latency, size of a run's model (or an arch)
    secateur profile resnet50 --runtime onnxruntime   # per-layer latency share, MACs, bytes, memory-bound
    secateur export runs/slimming-vgg --onnx --fp16 --int8
    secateur sensitivity vgg8 --weights base.safetensors   # per-layer scan -> sensitivity/ratios.json
    secateur recipes                            # the shipped recipes

Errors in what the user typed or wrote are one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ._errors import UsageError


def _positive(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: give a positive integer")
        return value
    return parse


def _fraction(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: give a number in [0, 1] (0.01 = 1 point)")
        return value
    return parse


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input {text!r}: give C,H,W as integers, e.g. 3,224,224") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"--input {text!r}: give C,H,W as three positive integers")
    return shape


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (``secateur inspect: argument --classes: ...``)."""

    def error(self, message: str):
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="secateur", description="Structured pruning for real CNNs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("compress", help="run a recipe end to end (rerun to resume)")
    c.add_argument("recipe", help="a shipped recipe name or a .toml file")
    c.add_argument("--out", type=Path, help="output directory (default runs/<recipe>)")
    c.add_argument("--force", action="store_true", help="redo the run in --out from scratch (removes only what secateur wrote there)")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--compile", action="store_true",
                   help="train through torch.compile (about 40 s to compile each stage, then 1.2-1.4x on CPU)")
    for name, help_ in (("inspect", "channel groups and per-layer cost of a model"),
                        ("measure", "params, MACs, latency and size of a model or a run"),
                        ("profile", "where the time goes on a runtime: per-layer latency, MACs, bytes moved")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("model", help="an architecture (vgg8, resnet18, file.py:fn), a run or a saved directory")
        s.add_argument("--input", type=_shape, help="C,H,W (default 3,224,224 for torchvision, else 1,28,28)")
        s.add_argument("--weights", help=".safetensors/.pt state_dict or a secateur.save directory")
        s.add_argument("--arch", help="the architecture of a saved directory")
        s.add_argument("--classes", type=_positive("--classes"), default=10)
        if name == "profile":
            s.add_argument("--runtime", default="onnxruntime", help="a secateur.runtimes name (default onnxruntime)")
            s.add_argument("--threads", type=_positive("--threads"), default=1)
            s.add_argument("--batch", type=_positive("--batch"), default=1)
            s.add_argument("--top", type=_positive("--top"), default=20, help="layers listed (slowest first)")
            s.add_argument("--plot", type=Path, help="also draw the slowest layers to this PNG (a new file)")
    e = sub.add_parser("export", help="ONNX export of a run's model, checked with ONNX Runtime")
    e.add_argument("run", type=Path, help="a compress output directory")
    e.add_argument("--onnx", action="store_true", help="the fp32 ONNX file (always written; kept for clarity)")
    e.add_argument("--fp16", action="store_true")
    e.add_argument("--int8", action="store_true")
    e.add_argument("--force", action="store_true", help="replace existing files")
    z = sub.add_parser("sensitivity", help="Li et al.'s per-layer scan: accuracy vs rate, and per-layer ratios")
    z.add_argument("model", help="an architecture (vgg8, resnet18, file.py:fn)")
    z.add_argument("--weights", required=True, help=".safetensors/.pt state_dict of the trained model")
    z.add_argument("--data", default="fashion-mnist", help="fashion-mnist, cifar:FOLDER or folder:FOLDER")
    z.add_argument("--images", type=_positive("--images"), default=2000, help="test images to evaluate on")
    z.add_argument("--rates", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    z.add_argument("--tolerance", type=_fraction("--tolerance"), default=0.01, help="accuracy drop allowed per layer (0.01 = 1 pt)")
    z.add_argument("--out", type=Path, default=Path("sensitivity"))
    z.add_argument("--force", action="store_true")
    sub.add_parser("recipes", help="list the shipped recipes")
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"secateur: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning   # a command's warnings are one line, like its errors
    args = parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UsageError as e:
        print(f"secateur {args.command}: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"secateur {args.command}: {first}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"secateur {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    from . import _commands
    from ._recipe import parse, shipped
    if args.command == "recipes":
        print("\n".join(shipped()))
        return 0
    if args.command == "compress":
        from ._compress import run, stages_table
        recipe = parse(args.recipe)
        out = args.out or Path("runs") / recipe.path.stem
        summary = run(recipe, out, force=args.force, progress=not args.no_progress, compile=args.compile)
        print(stages_table(summary["records"]))
        print(f"done: {out}/model (weights), {out}/report/report.md")
        return 0
    if args.command == "export":
        return _commands.export(args)
    return getattr(_commands, args.command)(args)

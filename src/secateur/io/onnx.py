"""ONNX export, a check against PyTorch, fp16 / int8 conversion, and ONNX Runtime latency and accuracy.

    path = export_onnx(model, x, "model.onnx")          # dynamic batch, onnx.checker-clean
    err = check_onnx(path, model, x)                    # max relative error vs PyTorch; raises if too big
    to_fp16(path, "model.fp16.onnx")                    # float16 weights, float32 inputs and outputs
    quantize_int8(path, "model.int8.onnx", calibration=loader)   # static (QDQ); without: dynamic
    ort_latency("model.int8.onnx", x), ort_accuracy("model.int8.onnx", test_loader)

Every file is written atomically (a crash leaves the old file or the complete new one) and an
existing one is only replaced with ``overwrite=True``. The conversions are those of the maintained
libraries: ``torch.onnx``, ``onnxruntime.transformers.float16`` and ``onnxruntime.quantization``.
Errors are one line naming the model or file and what to do; a file that is missing or that ONNX
Runtime cannot read raises :class:`~secateur.io.LoadError`, an export or check that fails
:class:`OnnxError`. ``onnx``, ``onnxruntime`` and ``onnxscript`` (``pip install 'secateur[onnx]'``)
are imported when a function needs them, so ``import secateur`` works without them.
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secateur.io._atomic import atomic_file
from secateur.io._checkpoint import LoadError
from secateur.forward import as_inputs, first_line, inference, model_device, time_forward
from secateur.forward import checked_forward, scale_error

__all__ = ["OnnxError", "check_onnx", "export_onnx", "ort_accuracy", "ort_latency", "quantize_int8", "to_fp16"]

Inputs = tuple[torch.Tensor, ...]
PathLike = str | os.PathLike[str]


class OnnxError(ValueError):
    """An export, conversion or ONNX Runtime check failed; the message names the model or file and the fix."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"secateur.io.onnx needs the onnx package ({e}); pip install 'secateur[onnx]'") from e
    return onnx


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"secateur.io.onnx needs onnxruntime ({e}); pip install 'secateur[onnx]'") from e
    return onnxruntime


# ---------------------------------------------------------------------------------------------- export

def export_onnx(model: nn.Module, example_inputs: torch.Tensor | Inputs, path: PathLike, *,
                opset: int | None = None, dynamic_batch: bool = True, overwrite: bool = False) -> Path:
    """Export ``model`` (in eval mode) to the ONNX file ``path``, check it with ``onnx.checker``; return the path.

    Exporter: the dynamo one (``torch.onnx.export(..., dynamo=True)``, torch's default and maintained
    exporter). On torch 2.14 it exported every zoo model tried (the secateur CIFAR models, ResNets,
    MobileNetV3, EfficientNet, DenseNet, ShuffleNet, RegNetY, GoogLeNet, ConvNeXt, AlexNet) within
    3e-4 relative error of PyTorch, while the legacy TorchScript exporter (deprecated) refuses e.g.
    AlexNet at 64 px (adaptive pooling to a size that does not divide the input). The dynamo exporter
    is slower (5-25 s for a small CNN on one core against 0.5-2 s), so a model it cannot export is
    retried with the legacy one, with a warning.

    ``dynamic_batch`` makes dim 0 of every input and output symbolic; otherwise the shapes are those
    of ``example_inputs``. ``opset`` is the ``ai.onnx`` opset (default: the exporter's). The model's
    training flags are restored afterwards; nothing else about it changes. Raises
    ``FileExistsError`` (before exporting) if ``path`` exists and ``overwrite`` is False,
    ``ValueError`` if the inputs do not fit the model, :class:`OnnxError` if the export fails.
    """
    target = Path(path)
    onnx, top = _onnx(), _onnx().defs.onnx_opset_version()
    if opset is not None and (type(opset) is not int or not 7 <= opset <= top):
        raise ValueError(f"opset={opset!r}: need an int from 7 to {top} (or None)")
    inputs = as_inputs(example_inputs, model_device(model))
    with atomic_file(target, overwrite=overwrite) as tmp, inference(model, None):
        checked_forward(model, inputs)
        _export(model, inputs, tmp, opset, dynamic_batch)
        try:
            onnx.checker.check_model(os.fspath(tmp), full_check=True)
        except Exception as e:
            raise OnnxError(f"{type(model).__name__}: the exported ONNX graph fails onnx.checker "
                            f"({first_line(e)}); try another opset=") from e
    return target


def _export(model: nn.Module, inputs: Inputs, dst: Path, opset: int | None, dynamic_batch: bool) -> None:
    """Write ``model`` to ``dst`` with the dynamo exporter, or the legacy one if dynamo fails."""
    name = type(model).__name__
    if dynamic_batch and any(x.shape[0] == 1 for x in inputs):
        # torch.export specialises a dim of size 1, so a symbolic batch needs an example of 2 or more
        inputs = tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in inputs)
    try:
        shapes = tuple({0: torch.export.Dim("batch")} for _ in inputs) if dynamic_batch else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, inputs, dynamo=True, opset_version=opset,
                                        dynamic_shapes=shapes, verbose=False)
            program.save(os.fspath(dst), external_data=False)
        return
    except Exception as e:
        dynamo_error = _root_line(e)
    warnings.warn(f"export_onnx: the dynamo exporter failed on {name} ({dynamo_error}); "
                  "retrying with the legacy TorchScript exporter", RuntimeWarning, stacklevel=3)
    in_names = [f"input_{i}" for i in range(len(inputs))]
    axes = {n: {0: "batch"} for n in in_names} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out_names = [f"output_{i}" for i in range(len(_leaves(model(*inputs))))]
            if axes is not None:
                axes.update({n: {0: "batch"} for n in out_names})
            torch.onnx.export(model, inputs, os.fspath(dst), dynamo=False, opset_version=opset,
                              input_names=in_names, output_names=out_names, dynamic_axes=axes)
    except Exception as e:
        raise OnnxError(f"{name}: ONNX export failed with both exporters (dynamo: {dynamo_error}; legacy: "
                        f"{_root_line(e)}); run torch.onnx.export(model, args, dynamo=True, report=True) "
                        "for a report") from e


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _root_line(error: BaseException) -> str:
    """``Type: first line`` of the innermost cause of ``error`` (torch.onnx wraps the real reason)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {_ANSI.sub('', first_line(error))}"


def _leaves(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or tuples, lists and dicts of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return [t for item in out for t in _leaves(item)]
    raise TypeError(f"the model returned a {type(out).__name__}; expected tensors (in tuples, lists or dicts)")


# ------------------------------------------------------------------------------------- ONNX Runtime

def _session(path: PathLike, *, threads: int | None = None) -> Any:
    """A CPU ONNX Runtime session for ``path`` on ``threads`` intra-op threads (default: as many as
    torch uses, so ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` apply); :class:`LoadError` (one
    line) if the file is missing or unreadable."""
    ort = _ort()
    p = Path(path)
    if not p.is_file():
        raise LoadError(f"{p}: no such file; check the path (write one with export_onnx)")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(os.fspath(p), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise LoadError(f"{p}: ONNX Runtime cannot load it ({first_line(e)}); "
                        "write it again with export_onnx") from e


def _feed(session: Any, arrays: Iterable[Any], path: PathLike) -> dict[str, np.ndarray]:
    """Session inputs by name: tensors become float32 CPU arrays."""
    values = [_numpy(a) for a in arrays]
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(values):
        raise ValueError(f"{path}: the model takes {len(names)} input(s) ({', '.join(names)}), got {len(values)}")
    return dict(zip(names, values, strict=True))


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x, dtype=np.float32)


def _run(session: Any, feed: dict[str, np.ndarray], path: PathLike) -> list[np.ndarray]:
    try:
        return session.run(None, feed)
    except Exception as e:
        shapes = ", ".join(str(v.shape) for v in feed.values())
        raise OnnxError(f"{path}: ONNX Runtime failed on input of shape {shapes} ({first_line(e)}); "
                        "export with the input shape you run (dynamic_batch=True for other batch sizes)") from e


def check_onnx(path: PathLike, model: nn.Module, example_inputs: torch.Tensor | Inputs, *,
               rtol: float = 1e-4, atol: float = 1e-6) -> float:
    """Run ``path`` in ONNX Runtime (CPU) and ``model`` in PyTorch (eval mode) on ``example_inputs``.

    Returns the largest relative error over the outputs, ``max|onnx - torch| / max|torch|`` per
    output (normalising by the output's scale, since elementwise ratios blow up on logits near 0).
    Raises :class:`OnnxError` (one line) when an output's ``max|onnx - torch|`` exceeds
    ``atol + rtol * max|torch|``, is not finite, or the outputs differ in number or shape. ONNX
    Runtime uses as many threads as torch (``torch.get_num_threads()``). The
    model's training flags are restored; nothing else about it changes.
    """
    if rtol < 0 or atol < 0:
        raise ValueError(f"need rtol >= 0 and atol >= 0, got rtol={rtol}, atol={atol}")
    session = _session(path)
    inputs = as_inputs(example_inputs, model_device(model))
    with inference(model, None):
        refs = _leaves(checked_forward(model, inputs))
    outs = _run(session, _feed(session, inputs, path), path)
    if len(outs) != len(refs):
        raise OnnxError(f"{path}: {len(outs)} output(s) but {type(model).__name__} returns {len(refs)}; "
                        "export this model again")
    worst = 0.0
    for i, (out, ref) in enumerate(zip(outs, refs, strict=True)):
        r = ref.detach().cpu().double().numpy()
        o = np.asarray(out, dtype=np.float64)
        if o.shape != r.shape:
            raise OnnxError(f"{path}: output {i} has shape {o.shape} but PyTorch gives {r.shape}; "
                            "export this model again")
        rel, diff, scale = scale_error(o, r)
        if not np.isfinite(diff) or diff > atol + rtol * scale:
            raise OnnxError(f"{path}: output {i} differs from {type(model).__name__} by relative error "
                            f"{rel:.3g} (max abs {diff:.3g}) > rtol {rtol:g} + atol {atol:g}; the file is "
                            "not this model or the export is unfaithful: export again, or try another opset")
        worst = max(worst, rel)
    return worst


def ort_latency(path: PathLike, example_inputs: torch.Tensor | Inputs, *, threads: int = 1,
                repeats: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of one ONNX Runtime (CPU) run of ``path`` on ``example_inputs``.

    ``threads`` intra-op threads (one inter-op thread), ``warmup`` untimed runs then ``repeats``
    timed ones, timed like :func:`secateur.measure` times PyTorch (``time_forward``).
    """
    if repeats < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, threads >= 1; got repeats={repeats}, "
                         f"warmup={warmup}, threads={threads}")
    session = _session(path, threads=threads)
    inputs = as_inputs(example_inputs, torch.device("cpu"))
    feed = _feed(session, inputs, path)
    _run(session, feed, path)
    times = time_forward(lambda *_: session.run(None, feed), inputs,  # type: ignore[arg-type]
                         repeats=repeats, warmup=warmup)
    return 1e3 * statistics.median(times)


def _images(batch: Any) -> Any:
    """The images of a loader batch: ``batch[0]`` of an ``(images, labels)`` pair."""
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0]
    raise ValueError(f"the loader yielded a {type(batch).__name__}; expected (images, labels) batches")


def ort_accuracy(path: PathLike, loader: Iterable[Any]) -> float:
    """Top-1 accuracy of ``path`` (ONNX Runtime, CPU, as many threads as torch) over a loader of
    ``(images, labels)`` batches."""
    session = _session(path)
    correct = total = 0
    for batch in loader:
        images, labels = _images(batch), batch[1]
        logits = _run(session, _feed(session, [images], path), path)[0]
        labels = _numpy(labels).reshape(-1)
        if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
            raise OnnxError(f"{path}: output of shape {logits.shape} for {labels.shape[0]} labels; "
                            "ort_accuracy needs (batch, classes) logits")
        correct += int((logits.argmax(1) == labels).sum())
        total += labels.shape[0]
    if total == 0:
        raise ValueError(f"ort_accuracy({path}): the loader yielded no batches")
    return correct / total


# -------------------------------------------------------------------------------- fp16 and int8

def _require_onnx(src: PathLike) -> Any:
    """The checked ``onnx.ModelProto`` in ``src``; :class:`LoadError` (one line) if missing or invalid."""
    onnx = _onnx()
    p = Path(src)
    if not p.is_file():
        raise LoadError(f"{p}: no such file; check the path (write one with export_onnx)")
    try:
        model = onnx.load(os.fspath(p))
        onnx.checker.check_model(model)
    except Exception as e:
        raise LoadError(f"{p}: not a valid ONNX model ({first_line(e)}); write it again with export_onnx") from e
    return model


def to_fp16(src: PathLike, dst: PathLike, *, overwrite: bool = False) -> Path:
    """Write ``dst``: ``src`` with float16 weights and compute, float32 inputs and outputs; return its path.

    Uses ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``. The file
    is about half the size; outputs typically move by 1e-3 to 1e-2 relative. Note that ONNX Runtime's
    CPU provider has few float16 kernels, so on the CPU it is rarely faster than float32.
    """
    with atomic_file(Path(dst), overwrite=overwrite) as tmp:
        model, onnx = _require_onnx(src), _onnx()
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        try:
            half = OnnxModel(convert_float_to_float16(model, keep_io_types=True))
            half.topological_sort()  # the converter appends the input casts after their consumers
            onnx.save(half.model, os.fspath(tmp))
            onnx.checker.check_model(os.fspath(tmp))
        except Exception as e:
            raise OnnxError(f"{src}: float16 conversion failed ({first_line(e)}); "
                            "export it again with export_onnx") from e
    return Path(dst)


def _reader(first: Any, rest: Iterator[Any], name: str) -> Any:
    """A ``CalibrationDataReader`` feeding input ``name`` the images of ``first``, then of ``rest``."""
    from onnxruntime.quantization import CalibrationDataReader

    class LoaderReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._next: Any = first

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch, self._next = self._next, None
            batch = next(rest, None) if batch is None else batch
            return None if batch is None else {name: _numpy(_images(batch))}

    return LoaderReader()


def quantize_int8(src: PathLike, dst: PathLike, *, calibration: Iterable[Any] | None = None,
                  overwrite: bool = False) -> Path:
    """Write ``dst``: ``src`` with int8 weights (and, when calibrated, int8 activations); return its path.

    ``src`` first goes through ``onnxruntime.quantization.shape_inference.quant_pre_process``
    (shape inference and graph optimisations such as folding BatchNorm into convolutions). Without
    ``calibration``: ``quantize_dynamic`` (int8 weights, activations quantised on the fly; meant for
    MatMul-heavy models, and on CNNs its ConvInteger kernels are often slower than float32). With
    ``calibration``, a loader of ``(images, labels)`` batches (a few hundred representative images):
    ``quantize_static`` in QDQ format with per-channel int8 weights and MinMax-calibrated int8
    activations, the usual choice for CNNs.
    """
    with atomic_file(Path(dst), overwrite=overwrite) as tmp, tempfile.TemporaryDirectory() as work:
        _require_onnx(src)
        from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = Path(work) / "pre.onnx"
        try:
            quant_pre_process(os.fspath(src), os.fspath(pre))
        except Exception as e:
            raise OnnxError(f"{src}: quant_pre_process failed ({first_line(e)}); "
                            "export it again with export_onnx") from e
        if calibration is None:
            _quantize(src, lambda: quantize_dynamic(pre, tmp))
            return Path(dst)
        names = [i.name for i in _session(pre).get_inputs()]
        if len(names) != 1:
            raise ValueError(f"{src}: static quantisation supports single-input models; this one takes {names}")
        batches = iter(calibration)
        first = next(batches, None)
        if first is None:
            raise ValueError(f"quantize_int8({src}): the calibration loader yielded no batches")
        reader = _reader(first, batches, names[0])
        _quantize(src, lambda: quantize_static(pre, tmp, reader, quant_format=QuantFormat.QDQ,
                                               per_channel=True))
    return Path(dst)


def _quantize(src: PathLike, call: Any) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except Exception as e:
        raise OnnxError(f"{src}: int8 quantisation failed ({first_line(e)}); "
                        "export it again with export_onnx, or quantise without calibration") from e

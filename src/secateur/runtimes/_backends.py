"""The runtimes: PyTorch eager (default layout and channels_last), and from one ONNX export ONNX
Runtime, OpenVINO, OpenCV's DNN module and Alibaba's MNN (a mobile runtime; its converter is called
directly, without the ``mnnconvert`` wrapper, which pip-installs a logging SDK and reports usage)."""
from __future__ import annotations

import copy
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from ..forward import first_line, flat_tensors
from ._base import Backend, RuntimeMismatch, median_ms, quiet, register


class Torch(Backend):
    name, modules = "torch", ("torch",)

    def __init__(self, channels_last: bool = False):
        self.channels_last = channels_last
        if channels_last:
            self.name = "torch-channels-last"

    def load(self, model, inputs, folder, threads):
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        net = copy.deepcopy(model).eval().to(memory_format=fmt)

        def run(arrays):
            xs = [torch.from_numpy(a).contiguous(memory_format=fmt) if a.ndim == 4 else torch.from_numpy(a)
                  for a in arrays]
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                with torch.no_grad():
                    return [t.numpy() for t in flat_tensors(net(*xs))]
            finally:
                torch.set_num_threads(before)
        return run


class FromOnnx(Backend):
    """A runtime that loads the model's ONNX export (``folder/model.onnx``, batch dim symbolic; made on
    first use, so runtimes prepared in one folder share it)."""

    extra = "runtimes"
    exports = True

    def load(self, model, inputs, folder, threads):
        from ..io.onnx import export_onnx
        path = folder / "model.onnx"
        if not path.is_file():   # a folder shared by several runtimes exports once
            export_onnx(model, inputs, path, dynamic_batch=True)
        try:
            return self.open(path, folder, threads)
        except RuntimeMismatch:
            raise
        except Exception as e:   # the runtime refuses the graph: one line, naming it
            raise RuntimeMismatch(f"runtime {self.name!r} cannot load the model ({first_line(e)})") from e

    def open(self, path: Path, folder: Path, threads: int):
        raise NotImplementedError


class OnnxRuntime(FromOnnx):
    name, extra, modules = "onnxruntime", "onnx", ("onnx", "onnxruntime", "onnxscript")

    def open(self, path, folder, threads):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.log_severity_level, opts.intra_op_num_threads, opts.inter_op_num_threads = 3, threads, 1
        session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda arrays: session.run(None, dict(zip(names, arrays)))


class OpenVINO(FromOnnx):
    name, modules = "openvino", ("onnx", "onnxscript", "openvino")

    @staticmethod
    def _compile(path: Path, threads: int, **config):
        import openvino as ov
        core = ov.Core()
        return core.compile_model(core.read_model(os.fspath(path)), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_PRECISION_HINT": "f32", **config})   # not bf16 where the CPU has it

    def open(self, path, folder, threads):
        compiled = self._compile(path, threads)
        request = compiled.create_infer_request()

        def run(arrays):
            request.infer(arrays)
            return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]
        return run

    def kernels(self, prepared, folder, threads, repeats):
        """OpenVINO's own per-node timings (``PERF_COUNT``), less its layout conversions (``Reorder``)."""
        request = self._compile(folder / "model.onnx", threads, PERF_COUNT=True).create_infer_request()
        times = []
        for i in range(repeats + 2):   # two warm-up runs
            request.infer(prepared.arrays)
            if i >= 2:
                times.append(sum(p.real_time.total_seconds() for p in request.profiling_info
                                 if p.node_type != "Reorder"))
        return 1e3 * statistics.median(times)


class OpenCV(FromOnnx):
    name, modules = "opencv", ("onnx", "onnxscript", "cv2")

    def open(self, path, folder, threads):
        import cv2
        import onnx
        names = [i.name for i in onnx.load(os.fspath(path), load_external_data=False).graph.input]
        net = cv2.dnn.readNetFromONNX(os.fspath(path))
        outputs = net.getUnconnectedOutLayersNames()

        def run(arrays):
            before = cv2.getNumThreads()
            cv2.setNumThreads(threads)
            try:
                for name, a in zip(names, arrays):
                    net.setInput(a, name)
                out = net.forward(outputs)
            finally:
                cv2.setNumThreads(before)
            return list(out) if isinstance(out, (tuple, list)) else [out]
        return run


class MNN(FromOnnx):
    name, modules = "mnn", ("onnx", "onnxscript", "MNN")

    def open(self, path, folder, threads):
        import MNN.expr as F
        target = folder / "model.mnn"
        if not target.is_file():   # converted once a folder, as the ONNX export is
            part = folder / "model.mnn.part"   # renamed when whole: a failed conversion leaves no model.mnn
            args = ["mnnconvert", "-f", "ONNX", "--modelFile", os.fspath(path), "--MNNModel", os.fspath(part),
                    "--bizCode", "secateur"]
            done = subprocess.run([sys.executable, "-c", "import sys, MNN, _tools; _tools.mnnconvert(sys.argv[1:])",
                                   *args], capture_output=True, text=True)
            if done.returncode != 0 or not part.is_file():
                tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
                raise RuntimeMismatch(f"runtime 'mnn' cannot convert the model: {tail[0]}")
            os.replace(part, target)
        net = self._module(target, threads)

        def run(arrays):
            outs = net.forward([F.const(a, list(a.shape), F.NCHW) for a in arrays])
            outs = outs if isinstance(outs, list) else [outs]
            return [np.array(F.convert(o, F.NCHW).read()) for o in outs]
        return run

    @staticmethod
    def _module(target: Path, threads: int):
        import MNN.nn as mnn
        with quiet():
            rt = mnn.create_runtime_manager(({"backend": "CPU", "numThread": threads},))
            return mnn.load_module_from_file(os.fspath(target), [], [], runtime_manager=rt)

    def kernels(self, prepared, folder, threads, repeats):
        """The module run on inputs already in MNN's own layout (NC4HW4), its outputs left in it."""
        import MNN.expr as F
        net = self._module(folder / "model.mnn", threads)
        xs = [F.const(a, list(a.shape), F.NCHW) for a in prepared.arrays]
        xs = [F.convert(x, F.NC4HW4) if a.ndim == 4 else x for x, a in zip(xs, prepared.arrays)]
        for x in xs:
            x.read()

        def run():
            outs = net.forward(xs)
            for o in outs if isinstance(outs, list) else [outs]:
                o.read()
        return median_ms(run, repeats, warmup=2)


for _backend in (Torch(), Torch(channels_last=True), OnnxRuntime(), OpenVINO(), OpenCV(), MNN()):
    register(_backend)

"""The runtimes: PyTorch eager (default layout and channels_last), and from one ONNX export ONNX
Runtime, OpenVINO, OpenCV's DNN module and Alibaba's MNN (a mobile runtime; its converter is called
directly, without the ``mnnconvert`` wrapper, which pip-installs a logging SDK and reports usage)."""
from __future__ import annotations

import copy
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..forward import first_line, flat_tensors, kept_memory, num_threads
from ..layers import is_weighted
from ._base import Backend, RuntimeMismatch, quiet, register
from ._nodes import WEIGHTED_OPS, by_module, fused_owners, onnx_modules

# the OpenMP wait policy torch's threads run under, as its OpenMP read it when torch loaded (just before
# this module): a benchmark that sets the variable later changes nothing, so the key must not change either
OMP_POLICY = os.environ.get("OMP_WAIT_POLICY", "").strip().lower() or "default"
WARMUP = 5   # untimed runs before a runtime's own profile is read: a fresh session's first runs are slow
WEIGHTED_KERNELS = WEIGHTED_OPS + ("FusedConv", "FusedGemm", "FusedMatMul")   # ONNX Runtime's fused kernels


class Torch(Backend):
    name, modules = "torch", ("torch",)

    @property
    def timing(self) -> str:
        """Timed in ``forward.kept_memory`` (since 2026-12-02: glibc no longer maps activations afresh),
        under the OpenMP wait policy torch loaded with: PASSIVE threads sleep between operations and
        wake for each, which a small model at batch 1 pays on every one (ResNet-56 on Fashion-MNIST,
        2 threads: 19.7 ms a run, 4.3 ms with the default policy), so its tables are kept apart."""
        return f"-kept-memory-omp-{OMP_POLICY}"

    def __init__(self, channels_last: bool = False):
        self.channels_last = channels_last
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.name = "torch-channels-last"

    def _inputs(self, arrays) -> list[torch.Tensor]:
        return [torch.from_numpy(a).contiguous(memory_format=self.format) if a.ndim == 4 else torch.from_numpy(a)
                for a in arrays]

    def load(self, model, inputs, folder, threads):
        net = copy.deepcopy(model).eval().to(memory_format=self.format)

        def run(arrays):
            with num_threads(threads), torch.no_grad():
                return [t.numpy() for t in flat_tensors(net(*self._inputs(arrays)))]
        return run

    def layer_times(self, prepared, folder, threads, repeats):
        """Each weighted module's wall time inside the model (forward hooks on a copy, the inputs as
        ``load`` runs them)."""
        net = copy.deepcopy(prepared.model).eval().to(memory_format=self.format)
        xs, run, start = self._inputs(prepared.arrays), {}, {}
        for name, m in net.named_modules():   # the copy is dropped after: its hooks with it
            if is_weighted(m):
                m.register_forward_pre_hook(lambda m, a, name=name: start.__setitem__(name, time.perf_counter()))
                m.register_forward_hook(lambda m, a, o, name=name: run.__setitem__(
                    name, run.get(name, 0.0) + 1e3 * (time.perf_counter() - start[name])))

        def once():
            run.clear()
            net(*xs)
            return dict(run)
        with num_threads(threads), torch.no_grad():
            return _node_medians(once, repeats)


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

    def node_times(self, prepared, folder: Path, threads: int, repeats: int) -> dict[str, float]:
        """Median milliseconds of each operation of ``folder/model.onnx`` as the runtime runs it, keyed
        by the ONNX node's name or its first output's name; ``{}``: the runtime has no profile."""
        return {}

    def layer_times(self, prepared, folder, threads, repeats):
        times = self.node_times(prepared, folder, threads, repeats)
        if not times:
            return {}
        inputs = tuple(torch.from_numpy(a) for a in prepared.arrays)
        return by_module(times, onnx_modules(folder / "model.onnx", prepared.model, inputs))


class OnnxRuntime(FromOnnx):
    name, extra, modules = "onnxruntime", "onnx", ("onnx", "onnxruntime", "onnxscript")

    def open(self, path, folder, threads):
        session = self._session(path, threads)
        names = [i.name for i in session.get_inputs()]
        return lambda arrays: session.run(None, dict(zip(names, arrays)))

    @staticmethod
    def _session(path: Path, threads: int, profile: Path | None = None):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.log_severity_level, opts.intra_op_num_threads, opts.inter_op_num_threads = 3, threads, 1
        if profile is not None:
            opts.enable_profiling, opts.profile_file_prefix = True, os.fspath(profile)
        return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])

    def node_times(self, prepared, folder, threads, repeats):
        """ONNX Runtime's own profile (``enable_profiling``): each weighted operation's kernel time
        in each run, keyed by the ONNX node it fused (``fused_owners``: ONNX Runtime renames what it
        fuses, "fused node_Gemm_127", "relu_3_nchwc")."""
        import json
        path = folder / "model.onnx"
        session = self._session(path, threads, profile=folder / "ort-profile")
        feed = dict(zip([i.name for i in session.get_inputs()], prepared.arrays))
        for _ in range(WARMUP + repeats):
            session.run(None, feed)
        written = Path(session.end_profiling())
        try:
            events = json.loads(written.read_text())
        finally:
            written.unlink()
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
        ops = [(e["ts"], e["name"].removeprefix("fused ").removesuffix("_kernel_time").removesuffix("_nchwc"),
                e["dur"] / 1e3)
               for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
               and e.get("args", {}).get("op_name") in WEIGHTED_KERNELS]
        owners = fused_owners(path, sorted({name for _, name, _ in ops}))
        per_run: list[dict[str, float]] = [{} for _ in runs]
        for ts, name, ms in ops:
            i = next((i for i, (a, b) in enumerate(runs) if a <= ts <= b), None)
            if i is not None and name in owners:
                per_run[i][owners[name]] = per_run[i].get(owners[name], 0.0) + ms
        return _medians(per_run[WARMUP:])


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

    def node_times(self, prepared, folder, threads, repeats):
        request = self._compile(folder / "model.onnx", threads, PERF_COUNT=True).create_infer_request()

        def once():
            request.infer(prepared.arrays)
            run: dict[str, float] = {}
            for p in request.profiling_info:   # a conv with a bias is "<node>/WithoutBiases" and an Add
                node = p.node_name.split("/")[0]
                run[node] = run.get(node, 0.0) + 1e3 * p.real_time.total_seconds()
            return run
        return _node_medians(once, repeats)


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
        """The sum of MNN's own per-operation timings, less its copies between layouts: alone, a layer
        run through MNN's module API also paid its calls from Python and its layout's conversions (a
        1x1 conv, 64 -> 256 channels at 56 px: 0.95 ms that way, 0.43 by its operation's own time,
        as inside the model)."""
        return sum(self.node_times(prepared, folder, threads, repeats).values())

    def node_times(self, prepared, folder, threads, repeats):
        """MNN's session API, timing each operation between its begin and end callbacks."""
        import MNN
        import onnx
        names = [i.name for i in onnx.load(os.fspath(folder / "model.onnx"), load_external_data=False).graph.input]
        with quiet():
            net = MNN.Interpreter(os.fspath(folder / "model.mnn"))
            session = net.createSession({"backend": "CPU", "numThread": threads})
        inputs = net.getSessionInputAll(session)
        for name, a in zip(names, prepared.arrays):
            net.resizeTensor(inputs[name], tuple(a.shape))
        net.resizeSession(session)
        for name, a in zip(names, prepared.arrays):
            inputs[name].copyFrom(MNN.Tensor(tuple(a.shape), MNN.Halide_Type_Float, np.ascontiguousarray(a),
                                             MNN.Tensor_DimensionType_Caffe))
        run, start = {}, {}

        def begin(tensors, op):
            start[op.getName()] = time.perf_counter()
            return True

        def end(tensors, op):
            name = op.getName()
            if op.getType() != "Raster":   # a copy between layouts, not the layer's work
                node = name.split("__")[0]   # a linear layer is "<output>__matmul_converted"
                run[node] = run.get(node, 0.0) + 1e3 * (time.perf_counter() - start[name])
            return True

        def once():
            run.clear()
            net.runSessionWithCallBackInfo(session, begin, end)
            return dict(run)
        return _node_medians(once, repeats)


def _node_medians(once, repeats: int) -> dict[str, float]:
    """Each node's median milliseconds over ``repeats`` profiled runs (``once()``: one run's
    milliseconds by node), after ``WARMUP`` untimed ones."""
    with kept_memory():   # as time_forward times a whole run
        for _ in range(WARMUP):
            once()
        return _medians([once() for _ in range(repeats)])


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each key's median over the runs (a key missing from a run counts as 0 there)."""
    keys = set().union(*runs) if runs else set()
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}


for _backend in (Torch(), Torch(channels_last=True), OnnxRuntime(), OpenVINO(), OpenCV(), MNN()):
    register(_backend)

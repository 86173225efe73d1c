"""Runtimes as backends: the same model exported, loaded, checked against PyTorch and timed on the
runtime it ships on.

    p = secateur.runtimes.prepare(model, x, "openvino", threads=1)   # export, load, check outputs
    p.latency()                                                       # median ms at x's batch
    secateur.runtimes.installed()                                     # which of them import here

``torch`` and ``torch-channels-last`` (PyTorch eager), ``onnxruntime`` (``pip install
'secateur[onnx]'``), ``openvino``, ``opencv`` (its DNN module) and ``mnn`` (``pip install
'secateur[runtimes]'``). A new runtime is one :class:`Backend` subclass and one :func:`register`.

``latency_table(model, graph, runtime)`` times every conv/linear layer alone at a grid of kept widths
(cached on disk); ``secateur.prune(..., target_latency=, runtime=)`` plans against it, and
``profile(model, graph, runtime)`` says where the time goes (``secateur profile`` on the command line).
"""
from . import _backends  # noqa: F401  (registers the runtimes)
from ._base import (Backend, Prepared, RuntimeMismatch, RuntimeMissing, agree, backend, backends, installed,
                    measured_ratio, prepare, ratio_to, ratios_to, register)
from ._profile import LayerProfile, format_profile, plot_profile, profile
from ._cache import cache_file, cpu_name
from ._tables import Curve, LatencyTable, grid, latency_table, monotone

__all__ = ["Backend", "Curve", "LatencyTable", "LayerProfile", "Prepared", "RuntimeMismatch", "RuntimeMissing", "agree",
           "backend", "backends", "cache_file", "cpu_name", "format_profile", "grid", "installed", "latency_table", "measured_ratio", "monotone",
           "plot_profile", "prepare", "profile", "ratio_to", "ratios_to", "register"]

"""Where latency tables are kept on disk: one JSON file per machine, runtime, runtime version, thread
count and way of timing (``$SECATEUR_CACHE``, else ``$XDG_CACHE_HOME/secateur/latency``), read
leniently and written atomically."""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import platform
from pathlib import Path

from ._base import Backend, backend

PROTOCOL = "min20ms"   # how points are timed: part of the cache key, so a change re-measures


def _version(runtime: str) -> str:
    parts = []
    for name in backend(runtime).modules:
        module = importlib.import_module(name)
        parts.append(f"{name}-{getattr(module, '__version__', '?')}")
    return "_".join(parts)


def cpu_name() -> str:
    """This machine's CPU model (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_file(runtime: str, threads: int, folder: str | os.PathLike | None = None) -> Path:
    """Where timings for ``runtime`` on this machine are cached."""
    root = Path(folder or os.environ.get("SECATEUR_CACHE") or
                Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "secateur" / "latency")
    how = f"{PROTOCOL}{backend(runtime).timing}{_kernels(runtime)}"
    key = hashlib.sha256(f"{cpu_name()} x{os.cpu_count()}|{runtime}|{_version(runtime)}|{threads}|{how}"
                         .encode()).hexdigest()[:16]
    return root / f"{runtime}-{key}.json"


def _kernels(runtime: str) -> str:
    """How a point is timed, for the cache key: the whole run, or the backend's own ``kernels`` (then
    keyed by its class's source, so that a change in how a runtime times its operations re-measures)."""
    kind = type(backend(runtime))
    if kind.kernels is Backend.kernels:
        return ""
    code = source(kind)
    return "-kernels" if code is None else "-kernels-" + hashlib.sha256(code.encode()).hexdigest()[:8]


def source(obj) -> str | None:
    """The source code of a class or function, for a cache key; None for one without a source file."""
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return None


def read(path: Path) -> dict:
    """The timings kept in ``path``; none where it is missing or unreadable (it is timed again)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def store(path: Path, stored: dict) -> None:
    from ..io import atomic_file
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, overwrite=True) as tmp:   # our own cache file
        tmp.write_text(json.dumps(stored, indent=0, sort_keys=True))

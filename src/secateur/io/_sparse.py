"""Store a magnitude-pruned model sparsely, as in Deep Compression (Han et al., ICLR 2016).

Each Conv/Linear weight that is at least half zeros is stored with relative-index encoding: the
flattened weight's nonzeros, each with the uint8 gap from the previous entry's position (the first
counts from position -1, so gaps are 1..255). A gap over 255 is bridged by filler entries of gap 255
and value 0. The entry values are stored as

* ``"fp32"``: float32 (exact for float32, float16 and bfloat16 weights);
* ``"fp16"``: float16;
* ``"int8"``: uint8 indices into a 256-entry float32 codebook per tensor. Entry 0 is 0.0 (the
  fillers); entries 1..255 are k-means centroids of the nonzero values (scipy ``kmeans2``, seeded,
  initialised linearly over [min, max] as Han recommends, fitted on at most ``KMEANS_SAMPLE``
  values), refined by one nearest-centroid assignment and mean update over all values.

Everything else (biases, BatchNorm, dense weights) is stored as in ``model.state_dict()``. The
directory holds ``model.safetensors`` (key ``K`` dense, or ``K::gaps``, ``K::values`` and, for int8,
``K::codebook``) and ``sparse.json`` (per sparse tensor: shape, dtype, encoding, values, nnz,
entries; tied-weight aliases; byte counts).
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from scipy.cluster.vq import kmeans2
from torch import nn

from secateur.io._atomic import atomic_dir
from secateur.forward import first_line
from secateur.io._checkpoint import LoadError, read_header, read_safetensors
from secateur.io._pruned import _dumps   # one line per tensor
from secateur.io._state import shippable_state_dict

__all__ = ["FORMAT", "VERSION", "load_sparse", "save_sparse", "sparse_bytes"]

FORMAT, VERSION = "secateur-sparse", 1
WEIGHTS_FILE, SPEC_FILE = "model.safetensors", "sparse.json"
MIN_ZERO_FRACTION = 0.5     # weights with fewer zeros are stored densely
MAX_GAP = 255
KMEANS_SAMPLE = 1 << 14     # values fed to kmeans2 per tensor (it is O(n * 255) per iteration)
_VALUE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.uint8}
_SOURCE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def encode(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relative-index encoding of a 1-D array: ``(gaps uint8, entry values, is-a-nonzero bool)``."""
    where = np.flatnonzero(flat)
    dist = np.diff(where, prepend=-1)
    fillers = (dist - 1) // MAX_GAP
    last = np.cumsum(fillers + 1) - 1           # entry index of each nonzero, after its fillers
    gaps = np.full(int(last[-1]) + 1 if len(last) else 0, MAX_GAP, dtype=np.uint8)
    gaps[last] = dist - MAX_GAP * fillers
    real = np.zeros(len(gaps), dtype=bool)
    real[last] = True
    values = np.zeros(len(gaps), dtype=flat.dtype)
    values[last] = flat[where]
    return gaps, values, real


def decode(gaps: np.ndarray, values: np.ndarray, numel: int) -> np.ndarray:
    """Inverse of :func:`encode`: the dense 1-D array of ``numel`` elements."""
    flat = np.zeros(numel, dtype=values.dtype)
    flat[np.cumsum(gaps, dtype=np.int64) - 1] = values
    return flat


def codebook(values: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(codebook float32[256], indices uint8)``: entry 0 is 0.0, 1..255 are k-means centroids."""
    book = np.zeros(MAX_GAP + 1, dtype=np.float32)
    if values.size == 0:
        return book, np.zeros(0, dtype=np.uint8)
    x = values.astype(np.float32)
    rng = np.random.default_rng(seed)
    sample = x if x.size <= KMEANS_SAMPLE else rng.choice(x, KMEANS_SAMPLE, replace=False)
    init = np.linspace(x.min(), x.max(), MAX_GAP, dtype=np.float32)
    with warnings.catch_warnings():  # empty clusters keep their initial centroid; that is fine
        warnings.simplefilter("ignore", UserWarning)
        centroids, _ = kmeans2(sample, init, iter=10, minit="matrix", seed=seed)
    centroids = np.sort(centroids)
    label = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, x)   # nearest centroid (1-D)
    count = np.bincount(label, minlength=MAX_GAP)
    total = np.bincount(label, weights=x, minlength=MAX_GAP)
    centroids = np.where(count > 0, total / np.maximum(count, 1), centroids).astype(np.float32)
    book[1:] = centroids
    return book, (label + 1).astype(np.uint8)


def _sparse_keys(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Conv/Linear weights stored in ``tensors`` that are floating point and at least half zeros."""
    keys = []
    for name, m in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        t = tensors.get(key)
        if (isinstance(m, _WEIGHT_LAYERS) and t is not None and t.dtype in _SOURCE_DTYPES and t.numel()
                and t.numel() - torch.count_nonzero(t).item() >= MIN_ZERO_FRACTION * t.numel()):
            keys.append(key)
    return keys


def save_sparse(model: nn.Module, path: str | os.PathLike[str], *, values: str = "fp16",
                overwrite: bool = False) -> Path:
    """Write ``model`` sparsely to the directory ``path`` (see the module docstring); return the path.

    ``values``: ``"fp16"``, ``"int8"`` (256-entry codebook) or ``"fp32"``. The write is atomic;
    ``FileExistsError`` if ``path`` exists and ``overwrite`` is False. The model is unchanged.
    """
    if values not in _VALUE_DTYPES:
        raise ValueError(f"values must be one of {sorted(_VALUE_DTYPES)}, got {values!r}")
    target = Path(path)
    with atomic_dir(target, overwrite=overwrite) as tmp:
        tensors, aliases = shippable_state_dict(model)
        dense_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        out: dict[str, torch.Tensor] = {}
        spec: dict[str, Any] = {}
        for key in _sparse_keys(model, tensors):
            t = tensors.pop(key)
            flat = t.reshape(-1).float().numpy()
            gaps, vals, real = encode(flat)
            out[f"{key}::gaps"] = torch.from_numpy(gaps)
            if values == "int8":
                book, index = codebook(vals[real])
                coded = np.zeros(len(gaps), dtype=np.uint8)
                coded[real] = index
                out[f"{key}::values"] = torch.from_numpy(coded)
                out[f"{key}::codebook"] = torch.from_numpy(book)
            else:
                out[f"{key}::values"] = torch.from_numpy(vals).to(_VALUE_DTYPES[values])
            spec[key] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                         "encoding": "relative-index", "values": values,
                         "nnz": int(real.sum()), "entries": len(gaps)}
        if clash := sorted(set(out) & set(tensors)):
            raise ValueError(f"state_dict key {clash[0]!r} clashes with the sparse storage keys")
        safetensors.torch.save_file({**tensors, **out}, os.fspath(tmp / WEIGHTS_FILE))
        header = {"format": FORMAT, "version": VERSION, "torch": torch.__version__, "tensors": spec,
                  "aliases": aliases, "bytes": {"dense_tensors": dense_bytes,
                                                WEIGHTS_FILE: (tmp / WEIGHTS_FILE).stat().st_size}}
        (tmp / SPEC_FILE).write_text(_dumps(header), encoding="utf-8")
    return target


def sparse_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a directory written by :func:`save_sparse` (both files)."""
    root = Path(path)
    return sum((root / name).stat().st_size for name in (WEIGHTS_FILE, SPEC_FILE))


def _read_spec(root: Path) -> dict[str, Any]:
    spec_path = root / SPEC_FILE
    header = read_header(spec_path, FORMAT, VERSION, "secateur save_sparse")
    if not isinstance(header.get("tensors"), dict) or not isinstance(header.get("aliases", {}), dict):
        raise LoadError(f"{spec_path}: malformed (no 'tensors' table); save the model again")
    return header


def _check_shape(key: str, shape: Any, expected: dict[str, torch.Tensor], where: Path) -> None:
    if key not in expected:
        raise LoadError(f"{where}: key {key!r} is not in the model; pass an instance of the saved architecture")
    if tuple(shape) != tuple(expected[key].shape):
        raise LoadError(f"{where}: key {key!r} has shape {tuple(shape)}, the model "
                        f"{tuple(expected[key].shape)}; pass an instance of the saved architecture")


def _decode_tensor(key: str, info: Any, state: dict[str, torch.Tensor], where: Path,
                   expected: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rebuild one dense tensor from its ``::gaps`` / ``::values`` (/ ``::codebook``) entries."""
    try:
        shape = [int(s) for s in info["shape"]]
        dtype = getattr(torch, info["dtype"])
        kind = info["values"]
        numel = int(np.prod(shape, dtype=np.int64))
        if not isinstance(dtype, torch.dtype) or kind not in _VALUE_DTYPES or min(shape, default=1) < 0:
            raise ValueError(f"dtype {info['dtype']!r}, values {kind!r}")
        parts = ["gaps", "values"] + (["codebook"] if kind == "int8" else [])
        gaps, vals, *book = (state.pop(f"{key}::{p}") for p in parts)
    except KeyError as e:
        raise LoadError(f"{where}: sparse tensor {key!r}: missing {first_line(e)}; "
                        "the files do not belong together, save the model again") from e
    except (AttributeError, TypeError, ValueError) as e:
        raise LoadError(f"{where}: sparse tensor {key!r}: malformed entry ({first_line(e)}); "
                        "save the model again") from e
    _check_shape(key, shape, expected, where)
    ok = (gaps.dtype == torch.uint8 and vals.dtype == _VALUE_DTYPES[kind] and gaps.dim() == vals.dim() == 1
          and len(gaps) == len(vals) and int(gaps.sum(dtype=torch.int64)) <= numel and bool((gaps > 0).all())
          and (not book or (book[0].shape == (MAX_GAP + 1,) and book[0].dtype == torch.float32)))
    if not ok:
        raise LoadError(f"{where}: sparse tensor {key!r}: entries inconsistent with shape {shape}; "
                        "the file is corrupt, save the model again")
    v = book[0][vals.long()] if book else vals
    flat = decode(gaps.numpy(), v.float().numpy(), numel)
    return torch.from_numpy(flat).reshape(shape).to(dtype)


def load_sparse(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Decode a directory written by :func:`save_sparse` and load it, strictly, into ``model``.

    ``model`` must be an instance of the saved architecture; every key and shape is checked before
    it is touched, and any failure raises :class:`LoadError` naming the file and key. Returns ``model``.
    """
    root = Path(path)
    if not root.is_dir():
        raise LoadError(f"{root}: no such directory; pass a directory written by save_sparse")
    header = _read_spec(root)
    weights_path = root / WEIGHTS_FILE
    state = read_safetensors(weights_path)
    expected = model.state_dict()
    decoded = {key: _decode_tensor(key, info, state, weights_path, expected)
               for key, info in header["tensors"].items()}
    if stray := [k for k in state if "::" in k]:
        raise LoadError(f"{weights_path}: entry {stray[0]!r} is not described in {SPEC_FILE}; "
                        "the files do not belong together, save the model again")
    state.update(decoded)
    for key, source in header.get("aliases", {}).items():
        if source not in state:
            raise LoadError(f"{weights_path}: tensor {source!r} (shared with {key!r}) is missing; "
                            "the files do not belong together, save the model again")
        state[key] = state[source]
    for key in sorted(set(expected) | set(state)):
        if key not in state:
            raise LoadError(f"{weights_path}: key {key!r} of the model is missing from the file; "
                            "pass an instance of the saved architecture")
        _check_shape(key, state[key].shape, expected, weights_path)
    state = OrderedDict(state)
    state._metadata = getattr(expected, "_metadata", None)  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise LoadError(f"{weights_path}: does not fit the model ({' '.join(str(e).split())[:200]})") from e
    return model

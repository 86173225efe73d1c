"""Save and load pruned models without pickle: ``model.safetensors`` + ``pruning.json``.

``save(model, path)`` writes a directory; ``load(path, model=fresh_instance)`` resizes a fresh,
unpruned instance of the same architecture and loads the weights; ``load_state_dict_file`` reads a
plain ``.safetensors`` / ``.pt`` / ``.pth`` state_dict with ``weights_only=True``.

ONNX (needs ``pip install 'secateur[onnx]'``): ``export_onnx``, ``check_onnx``, ``to_fp16``,
``quantize_int8``, ``ort_latency`` and ``ort_accuracy`` (see :mod:`secateur.io.onnx`).

``atomic_file`` / ``atomic_dir``: write a file or directory so that readers see the old content or
the complete new one, never a mix (every file secateur writes goes through them).
"""

from secateur.io._atomic import atomic_dir, atomic_file, remove
from secateur.io._checkpoint import LoadError, load_state_dict_file, read_header, read_safetensors
from secateur.io._pruned import load, save
from secateur.io._sparse import load_sparse, save_sparse, sparse_bytes
from secateur.io._state import serialized_size, shippable_state_dict

# The ONNX functions load on first use: they need the optional onnx extra (pip install 'secateur[onnx]').
_ONNX = ("OnnxError", "check_onnx", "export_onnx", "ort_accuracy", "ort_latency", "quantize_int8", "to_fp16")


def __getattr__(name: str) -> object:
    if name in _ONNX:
        from secateur.io import onnx

        return getattr(onnx, name)
    raise AttributeError(f"module 'secateur.io' has no attribute {name!r}")


__all__ = ["LoadError", "OnnxError", "atomic_dir", "atomic_file", "remove", "check_onnx", "export_onnx", "load", "load_sparse", "load_state_dict_file",
           "ort_accuracy", "ort_latency", "quantize_int8", "read_header", "read_safetensors", "save", "save_sparse", "serialized_size", "shippable_state_dict",
           "sparse_bytes", "to_fp16"]

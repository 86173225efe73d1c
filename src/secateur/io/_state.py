"""A model's state_dict made ready for safetensors: tied tensors stored once, all contiguous on the CPU."""

from __future__ import annotations

from collections import Counter

import safetensors.torch
import torch
from torch import nn

__all__ = ["serialized_size", "shippable_state_dict"]


def _storage_key(t: torch.Tensor) -> tuple[torch.device, int]:
    return t.device, t.untyped_storage().data_ptr()


def shippable_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return ``(tensors, aliases)`` for ``model.state_dict()``.

    A tensor reachable under several keys (tied weights) is kept under its first key; ``aliases`` maps
    each other key to that one. Tensors that only partly share memory are cloned, because safetensors
    refuses shared memory. Values are detached, contiguous and on the CPU; the model is not changed.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_key: dict[tuple[object, ...], str] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                            "safetensors can only store tensors")
        t = value.detach()
        view = (*_storage_key(t), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in first_key and t.numel() > 0:
            aliases[key] = first_key[view]
            continue
        first_key[view] = key
        tensors[key] = t
    shared = Counter(_storage_key(t) for t in tensors.values() if t.numel() > 0)
    return {
        key: (t.clone() if shared[_storage_key(t)] > 1 else t.contiguous()).cpu()
        for key, t in tensors.items()
    }, aliases


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``model.safetensors`` as :func:`secateur.io.save` writes it (tied tensors once)."""
    tensors, _ = shippable_state_dict(model)
    return len(safetensors.torch.save(tensors))

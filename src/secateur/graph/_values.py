"""Helpers on the values the walk sees: nested outputs, fx's immutable arguments, data-sized ops."""
from __future__ import annotations

import torch
import torch.fx as fx

from ..forward import flat_tensors


def has_tensor(value) -> bool:
    return bool(flat_tensors(value))


_DATA_SIZED = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "nms", "batched_nms"}


def data_sized(n: fx.Node, args) -> bool:
    """An op whose output size is set by tensor values: nonzero, NMS, indexing with a tensor."""
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    if name in _DATA_SIZED or (name == "where" and len(args) == 1):
        return True
    if name in ("getitem", "__getitem__") and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) for i in index)
    return False


def same_objects(args, infos, out):
    """``out`` with each tensor's info when every output tensor is one of the input tensors, else None."""
    known: dict[int, object] = {}

    def collect(value, info):
        if isinstance(value, torch.Tensor):
            if info is not None:
                known[id(value)] = info
        elif isinstance(value, (tuple, list)) and isinstance(info, (tuple, list)) and len(value) == len(info):
            for v, i in zip(value, info):
                collect(v, i)
        elif isinstance(value, dict) and isinstance(info, dict):
            for k in value:
                collect(value[k], info.get(k))

    collect(args, infos[0] if isinstance(infos, tuple) and len(infos) == 2 else infos)

    def pick(value):
        if isinstance(value, torch.Tensor):
            if id(value) not in known:
                raise KeyError
            return known[id(value)]
        if isinstance(value, (tuple, list)):
            return tuple(pick(v) for v in value)
        if isinstance(value, dict):
            return {k: pick(v) for k, v in value.items()}
        return None

    try:
        return pick(out)
    except KeyError:
        return None


def mutable(a):
    """fx hands args over as immutable lists and dicts; code that mutates its inputs needs real ones."""
    if isinstance(a, fx.immutable_collections.immutable_list):
        return [mutable(x) for x in a]
    if isinstance(a, fx.immutable_collections.immutable_dict):
        return {k: mutable(v) for k, v in a.items()}
    if isinstance(a, tuple) and type(a) is tuple:
        return tuple(mutable(x) for x in a)
    if type(a) is list:
        return [mutable(x) for x in a]
    if type(a) is dict:
        return {k: mutable(v) for k, v in a.items()}
    return a


def rebuild(value, infos):
    """``value``'s structure with every tensor replaced by the next of ``infos``."""
    if isinstance(value, torch.Tensor):
        return next(infos)
    if isinstance(value, (tuple, list)):
        return tuple(rebuild(v, infos) for v in value)
    if isinstance(value, dict):
        return {k: rebuild(v, infos) for k, v in value.items()}
    return None

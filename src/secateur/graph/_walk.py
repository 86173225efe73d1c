"""Runs a traced model on example inputs and records how channels flow.

Every tensor a weighted layer produces gets fresh *unit ids*, one per channel. The walk follows them:
element-wise ops tie the units of their operands together (``edges``), data-movement ops (view,
flatten, cat, split, channel shuffle, ...) are replayed on tensors of labels so any reshaping maps
exactly, and ops the walk does not understand freeze the units they touch. Each place a unit meets a
weight (a conv's output rows, a consumer's input columns, a BatchNorm's entries, a bare parameter) is
recorded as a :class:`Site`.
"""
from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from ..forward import signature
from . import _ops, _sizes
from ._movement import constrain, moving, tie_along
from ._types import Record, Role, Site, TInfo
from ._values import data_sized, flat_tensors, has_tensor, mutable, rebuild, same_objects


class InputError(ValueError):
    """The model's forward failed on the example inputs."""


def _along(t: TInfo, dim: int, size: int) -> np.ndarray | None:
    """The unit ids along ``dim`` if channels lie exactly there (and only there), else None."""
    dim = dim % len(t.shape)
    if t.ids is None:
        return None
    if t.dims == (dim,) and t.ids.shape == (size,):
        return t.ids
    if t.dims == () and size == 1:
        return t.ids.reshape(1)
    return None


def _varying(lab: torch.Tensor) -> tuple[int, ...]:
    return tuple(d for d in range(lab.ndim)
                 if lab.shape[d] > 1 and not bool((lab == lab.narrow(d, 0, 1)).all()))


def _labels_to_info(lab: torch.Tensor, where: torch.Tensor) -> TInfo:
    """Reduce a label tensor to its channel dims: those where ``where`` (the same op replayed on
    channel *positions*) varies — so a repeated channel (``cat([t, t])`` of a 1-channel ``t``) keeps
    its dim."""
    dims = _varying(where)
    index = tuple(slice(None) if d in dims else 0 for d in range(lab.ndim))
    return TInfo(tuple(lab.shape), dims, lab[index].numpy().copy())


class Walker(fx.Interpreter):
    """fx interpreter that computes real values and, beside them, channel units."""

    def __init__(self, gm: fx.GraphModule, opaque: set[str], guards: Iterable[str] = (), *,
                 rec: Record | None = None, prefix: str = "", boundary: str | None = None):
        super().__init__(gm)
        self.extra_traceback = False   # keep our one-line errors one line
        self.rec = rec if rec is not None else Record()
        self.info: dict[fx.Node, object] = {}
        self.opaque = opaque
        self.prefix = prefix           # qualified name of the traced module within the model, plus "."
        self.boundary = boundary       # why its inputs and outputs are kept whole, when not the model's
        self.reads: dict[tuple[str, int], np.ndarray] = {}   # size reads: (node, dim) -> channel ids
        self.guards = set(guards)
        self.dynamic: set[fx.Node] = set()   # nodes whose output sizes may depend on the data

    # ---------------------------------------------------------------- unit bookkeeping
    def fresh(self, n: int) -> np.ndarray:
        ids = np.arange(self.rec.n_ids, self.rec.n_ids + n, dtype=np.int64)
        self.rec.n_ids += n
        return ids

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        self.rec.edges.append((np.asarray(a).ravel(), np.asarray(b).ravel()))

    def freeze_ids(self, ids: np.ndarray, reason: str) -> None:
        self.rec.frozen.append((np.asarray(ids).ravel(), reason))

    def freeze(self, value, reason: str) -> None:
        for t in self._tensors(value):
            if t.ids is not None:
                self.freeze_ids(t.ids, reason)
            if t.cross is not None:
                self.freeze_ids(t.cross, reason)

    def _tensors(self, value) -> list[TInfo]:
        if isinstance(value, TInfo):
            return [value]
        if isinstance(value, (tuple, list)):
            return [t for v in value for t in self._tensors(v)]
        if isinstance(value, dict):
            return [t for v in value.values() for t in self._tensors(v)]
        return []

    def new_info(self, value, reason: str | None):
        """Fresh units for an opaque result (frozen with ``reason``), recursing into tuples."""
        if isinstance(value, torch.Tensor):
            dims = (1,) if value.ndim >= 2 else ((0,) if value.ndim == 1 else ())
            ids = self.fresh(int(np.prod([value.shape[d] for d in dims], dtype=np.int64)))
            t = TInfo(tuple(value.shape), dims, ids.reshape([value.shape[d] for d in dims]))
            if reason:
                self.freeze(t, reason)
            return t
        if isinstance(value, (tuple, list)):
            return tuple(self.new_info(v, reason) for v in value)
        if isinstance(value, dict):
            return {k: self.new_info(v, reason) for k, v in value.items()}
        return None

    def site(self, module: str, role: Role, ids: np.ndarray, *, param: str | None = None, dim: int = 0,
             exact: bool = True, const: np.ndarray | None = None) -> None:
        """Record a site; a module called twice reuses its weights, so its units are tied."""
        key = (module, role, param)
        if key in self.rec.site_of:
            self.tie(self.rec.sites[self.rec.site_of[key]].ids, ids)
            return
        self.rec.site_of[key] = len(self.rec.sites)
        self.rec.sites.append(Site(module, role, np.asarray(ids).ravel(), param=param, dim=dim, exact=exact,
                                   const=const))

    # ---------------------------------------------------------------- interpreter
    def run_node(self, n: fx.Node):
        args, kwargs = mutable(self.fetch_args_kwargs_from_env(n))
        try:
            out = getattr(self, n.op)(n.target, args, kwargs)
        except Exception as exc:
            what = n.target if n.op == "call_module" else _ops.op_name(n.op, n.target)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"{what}: {first}") from exc
        self.info[n] = self.analyse(n, args, kwargs, out)
        if n.op != "output" and (data_sized(n, args) or any(a in self.dynamic for a in n.all_input_nodes)
                                 or n.op == "call_module" and str(n.target) in self.opaque):
            self.dynamic.add(n)
        if n.name in self.guards:
            _sizes.guard(self, n)
        return out

    def _output_shapes(self, nodes, value, path: str = "output") -> list:
        """``signature`` of the output, with -1 for every dim of a tensor whose sizes depend on the
        data (detections after NMS): those are compared by rank only."""
        if isinstance(nodes, fx.Node) and not isinstance(value, torch.Tensor):
            return [(p, tuple(-1 for _ in s) if nodes in self.dynamic and isinstance(s, tuple) else s)
                    for p, s in signature(value, path)]
        if isinstance(value, torch.Tensor):
            dynamic = not isinstance(nodes, fx.Node) or nodes in self.dynamic
            return [(path, tuple(-1 if dynamic else d for d in value.shape))]
        if isinstance(value, dict) and isinstance(nodes, dict):
            return [x for k in value for x in self._output_shapes(nodes.get(k), value[k], f"{path}[{k!r}]")]
        if isinstance(value, (tuple, list)) and isinstance(nodes, (tuple, list)) and len(nodes) == len(value):
            return [x for i, (nd, v) in enumerate(zip(nodes, value))
                    for x in self._output_shapes(nd, v, f"{path}[{i}]")]
        return signature(value, path)

    def arg_info(self, a):
        return fx.node.map_aggregate(a, lambda x: self.info.get(x) if isinstance(x, fx.Node) else None)

    def analyse(self, n: fx.Node, args, kwargs, out):
        info = self._analyse(n, args, kwargs, out)
        crossed = [t for t in (self.info.get(a) for a in n.all_input_nodes)
                   if isinstance(t, TInfo) and t.cross is not None]
        if crossed:
            from ._matmul import carry_cross
            return carry_cross(self, n, args, kwargs, out, crossed, info)
        return info

    def _analyse(self, n: fx.Node, args, kwargs, out):
        if n.op == "placeholder":
            return self.new_info(out, self.boundary or f"model input '{n.target}'")
        if n.op == "get_attr":
            return TInfo(tuple(out.shape), attr=self.prefix + str(n.target)) if isinstance(out, torch.Tensor) else None
        if n.op == "output":
            self.freeze(self.arg_info(n.args), self.boundary or "model output")
            if not self.prefix:
                self.rec.outputs = self._output_shapes(n.args[0], args[0])
            return None
        if n.op == "call_module":
            from ._modules import analyse_module
            return analyse_module(self, n, args, out)
        if n.op in ("call_function", "call_method") and not has_tensor(out):
            return _sizes.provenance(self, n, args, kwargs, out)
        kind = _ops.kind_of(n.op, n.target)
        handler = getattr(self, f"_{kind}")
        return handler(n, args, kwargs, out)

    # ---------------------------------------------------------------- op handlers
    def _ignore(self, n, args, kwargs, out):   # getattr, asserts: a tensor read off an object is new
        return self._unknown(n, args, kwargs, out, f"tensor attribute at node '{n.name}'")

    def _unknown(self, n, args, kwargs, out, why: str | None = None):
        ins = self.arg_info((n.args, n.kwargs))
        if not has_tensor(out):
            return None  # sizes, dims, Python numbers: no channels flow through them
        if why is None:
            same = same_objects(args, ins, out)
            if same is not None:   # it hands back its input tensors themselves (picks from a dict)
                return same
            self.dynamic.add(n)   # code we cannot read: its output's sizes may depend on the data
        reason = why or f"unsupported op {_ops.op_name(n.op, n.target)} at node '{n.name}'"
        self.freeze(ins, reason)
        return self.new_info(out, reason)

    def _like(self, n, args, kwargs, out):
        """``x.type_as(y)`` keeps x's channels; ``y.new_full(size)`` is a new tensor. Neither reads
        y's values, so y's channels are left alone."""
        if n.target == "type_as":
            return self.info.get(n.args[0])
        return self.new_info(out, f"new tensor at node '{n.name}'")

    def _roi(self, n, args, kwargs, out):
        """Region pooling: output channel c pools channel c of every feature level, so the levels'
        channels are tied and the output carries them."""
        levels = self.arg_info(n.args[0])
        levels = list(levels) if isinstance(levels, (tuple, list)) else [levels]
        if (not isinstance(out, torch.Tensor) or not levels
                or not all(isinstance(t, TInfo) and t.ids is not None and t.dims == (1,) for t in levels)
                or len({t.ids.size for t in levels}) != 1):
            return self._unknown(n, args, kwargs, out, f"region pooling of an unexpected layout at '{n.name}'")
        for t in levels[1:]:
            self.tie(levels[0].ids, t.ids)
        return TInfo(tuple(out.shape), (1,), levels[0].ids)

    def _pass(self, t: TInfo, out: torch.Tensor) -> TInfo:
        return TInfo(tuple(out.shape), t.dims, t.ids)

    def _spatial(self, n, args, kwargs, out):
        t = self.info.get(n.args[0])
        if not isinstance(t, TInfo) or not isinstance(out, torch.Tensor) or out.ndim != len(t.shape):
            return self._unknown(n, args, kwargs, out)
        return self._pass(t, out)

    def _pad(self, n, args, kwargs, out):
        """Padding passes channels, and a channel dim may be padded where every line along it is one
        unit (EfficientViT pads each head's values with a column of ones): the unit covers the pad."""
        t = self.info.get(n.args[0])
        pad = args[1] if len(args) > 1 else kwargs.get("pad", ())
        if not isinstance(t, TInfo) or not isinstance(out, torch.Tensor):
            return self._unknown(n, args, kwargs, out)
        rank = len(t.shape)
        widths = {rank - 1 - i: (pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)}
        padded = [d for d in t.dims if d in widths]
        if padded and (set(padded) & set(moving(self, t)) or min(min(widths[d]) for d in padded) < 0):
            return self._unknown(n, args, kwargs, out, f"padding of the channel dim at node '{n.name}'")
        ids = np.pad(t.ids, [widths.get(d, (0, 0)) for d in t.dims], mode="edge") if padded else t.ids
        return TInfo(tuple(out.shape), t.dims, ids)

    def _softmax(self, n, args, kwargs, out):
        """softmax / F.normalize: per channel when taken over another dim."""
        t = self.info.get(n.args[0])
        at = 2 if n.target is F.normalize else 1   # normalize(x, p=2.0, dim=1)
        dim = args[at] if len(args) > at else kwargs.get("dim", 1 if at == 2 else None)
        if isinstance(t, TInfo) and dim is not None and dim % len(t.shape) not in t.dims:
            return self._pass(t, out)
        return self._unknown(n, args, kwargs, out, f"{_ops.op_name(n.op, n.target).split('.')[-1]} over "
                                                   f"channels at node '{n.name}'")

    def _reduce(self, n, args, kwargs, out):
        t = self.info.get(n.args[0])
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if not isinstance(t, TInfo) or dim is None or t.ids is None:
            return self._unknown(n, args, kwargs, out, f"reduction over all dims at node '{n.name}'")
        rank = len(t.shape)
        reduced = {d % rank for d in ((dim,) if isinstance(dim, int) else dim)}
        across = [axis for axis, d in enumerate(t.dims) if d in reduced]
        if len(across) == len(t.dims):
            return self._unknown(n, args, kwargs, out, f"reduction over channels at node '{n.name}'")
        ids = t.ids
        for axis in reversed(across):   # torch.stack(xs).sum(0): the stacked tensors' channels meet
            tie_along(self, ids, axis)   # elementwise, so channel c of each is one unit
            ids = np.take(ids, 0, axis=axis)
        kept = tuple(d for d in t.dims if d not in reduced)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        dims = kept if keep else tuple(d - sum(r < d for r in reduced) for d in kept)
        return TInfo(tuple(out.shape), dims, ids)

    def _elementwise(self, n, args, kwargs, out):
        from ._elementwise import elementwise
        return elementwise(self, n, args, kwargs, out)

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return self.rec.components()[ids]

    def _matmul(self, n, args, kwargs, out):
        from ._matmul import matmul
        return matmul(self, n, args, kwargs, out)

    def _norm(self, n, args, kwargs, out):
        from ._elementwise import functional_norm
        return functional_norm(self, n, args, kwargs, out)

    def _movement(self, n, args, kwargs, out, module=None):
        """Replay the call (or ``module``) on label tensors: each output element carries its source's
        unit id; a second replay on channel positions tells which output dims carry channels."""
        if n.target is operator.getitem and not isinstance(self.env.get(n.args[0]), torch.Tensor):
            held = self.info.get(n.args[0])   # picking from a tuple (split, chunk, a module's outputs)
            if isinstance(held, dict):
                return held.get(args[1])
            return held[args[1]] if isinstance(held, (tuple, list)) else None
        view = _param_view(self, n, module)
        if view is not None:
            return view
        occurrence = itertools.count()

        indexed = n.args[0] if n.target is operator.getitem else None

        def label(x, positions: bool):
            if not isinstance(x, fx.Node):
                return x
            value, t = self.env[x], self.info.get(x)
            if not isinstance(value, torch.Tensor) or indexed is not None and x is not indexed:
                return value   # an index tensor (``biases[:, idxs]``) keeps its values
            if not isinstance(t, TInfo) or t.ids is None:  # a constant or parameter: one frozen unit
                t = self.info[x] = TInfo(tuple(value.shape), (), self.fresh(1).reshape(()))
                self.freeze(t, f"constant tensor at node '{x.name}'")
            view = [1] * value.ndim
            for d in t.dims:
                view[d] = value.shape[d]
            ids = t.ids
            if positions:   # each argument occurrence gets its own range of position codes
                ids = np.arange(ids.size).reshape(ids.shape) + (next(occurrence) << 32)
            return torch.from_numpy(np.ascontiguousarray(ids)).reshape(view).expand(value.shape).contiguous()

        try:
            res, where = (self._replay(n, module, *(fx.node.map_arg(a, lambda x: label(x, pos))
                                                   for a in (n.args, n.kwargs))) for pos in (False, True))
        except Exception:  # an op that cannot run on int64 labels: be safe, freeze
            return self._unknown(n, args, kwargs, out)
        if any(t.dtype != torch.int64 or t.numel() == 0 for t in flat_tensors(res)):
            return self._unknown(n, args, kwargs, out)
        flat = [_labels_to_info(r, w) for r, w in zip(flat_tensors(res), flat_tensors(where))]
        infos = rebuild(res, iter(flat))
        source = next((self.info.get(a) for a in n.all_input_nodes
                       if isinstance(self.info.get(a), TInfo)), None)
        if source is not None:
            why = constrain(self, n, args, kwargs, source, self._tensors(infos), module)
            if why:
                return self._unknown(n, args, kwargs, out, why)
        return infos

    @staticmethod
    def _replay(n: fx.Node, module, largs, lkwargs):
        if module is not None:
            return module(*largs, **lkwargs)
        if n.op == "call_method":
            return getattr(largs[0], n.target)(*largs[1:], **lkwargs)
        return n.target(*largs, **lkwargs)


def _param_view(w: Walker, n: fx.Node, module) -> TInfo | None:
    """A per-channel parameter reshaped in forward (``self.gamma.view(1, -1, 1, 1)``, timm's
    LayerScale): replay the op on the parameter's positions and, when its one long dim lands in order
    on one output dim, keep the parameter's name so the consumer can slice it."""
    tensors = [a for a in n.all_input_nodes if isinstance(w.env.get(a), torch.Tensor)]
    if module is not None or len(tensors) != 1:
        return None
    t = w.info.get(tensors[0])
    if not isinstance(t, TInfo) or t.attr is None or t.ids is not None:
        return None
    long = [d for d, size in enumerate(t.shape) if size > 1]
    if len(long) != 1:
        return None
    pd = long[0]
    view = [1] * len(t.shape)
    view[pd] = t.shape[pd]
    labels = torch.arange(t.shape[pd]).reshape(view).expand(t.shape)
    try:
        res = Walker._replay(n, None, *(fx.node.map_arg(a, lambda x: labels if x is tensors[0] else w.env[x])
                                        for a in (n.args, n.kwargs)))
    except Exception:
        return None
    if not isinstance(res, torch.Tensor) or res.dtype != torch.int64 or res.numel() == 0:
        return None
    varying = _varying(res)
    if len(varying) != 1:
        return None
    d = varying[0]
    line = res.movedim(d, -1).reshape(-1, res.shape[d])[0]
    if res.shape[d] != t.shape[pd] or not torch.equal(line, torch.arange(t.shape[pd])):
        return None
    return TInfo(tuple(res.shape), attr=t.attr, attr_dim=pd)


def run(gm: fx.GraphModule, example_inputs: tuple, opaque: set[str], guards: Iterable[str] = (), *,
        rec: Record | None = None, prefix: str = "", boundary: str | None = None) -> Record:
    """Walk ``gm`` on the example inputs (the caller sets eval mode and no grad) and return what it
    recorded; ``guards``: nodes whose value Python used as a plain number while tracing. ``rec``,
    ``prefix``, ``boundary``: walking a submodule of the model into the model's record."""
    walker = Walker(gm, opaque, guards, rec=rec, prefix=prefix, boundary=boundary)
    walker.run(*example_inputs)
    return walker.rec



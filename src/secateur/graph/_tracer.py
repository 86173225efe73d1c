"""A torch.fx tracer that runs the model on the example inputs while it traces.

Every proxy carries the concrete value it stands for, so Python in a ``forward`` that reads
``x.shape``, ``x.size(1)``, ``x.dim()``, ``x.dtype`` or ``x.device``, branches on them, asserts on
them, unpacks ``chunk``/``split`` results or a ``*args`` tuple works as it does at run time. Sizes
stay graph nodes (the walk needs to know where a reshape's sizes come from); what Python turns into a
plain ``bool``/``int``/``float`` is recorded as a *guard*, so the walk can freeze channels whose
count the code relies on. Modules whose code still cannot be traced (data-dependent shapes in
detection post-processing, code that checks ``isinstance(x, torch.Tensor)``) are found one by one,
made opaque, and the trace is retried.

Chosen over ``torch.export`` (which reads all the CNNs above as well) because an fx graph keeps the
model's own layers as ``call_module`` leaves, named as the surgery needs them, and keeps
torch-level ops the walk understands; an export graph is ATen with every layer inlined.
"""
from __future__ import annotations

import inspect
import operator
import sys
import traceback
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..forward import map_tensors
from ..layers import Block, handler_for, is_weighted
from ._preserve import restore, snapshot
from . import _ops

# Tensor attributes and methods whose values never change when channels are removed: answered with
# the concrete value, no graph node.
_STATIC_ATTRS = {"dtype", "device", "ndim", "is_cuda", "layout", "requires_grad", "is_sparse",
                 "is_quantized", "is_meta", "is_floating_point", "is_complex"}
_STATIC_METHODS = {"dim", "ndimension", "get_device", "is_contiguous", "is_floating_point",
                   "element_size", "is_complex", "data_ptr"}


class DataDependent(Exception):
    """Python branches on (or reads out) a tensor's values: no graph can stand for that code."""


_DATA_METHODS = {"item", "tolist", "numpy"}   # values leave the graph: data-dependent from here on


class ModuleTraceFailure(Exception):
    """Tracing failed in ``method`` of ``module`` (a qualified name; '' is the root)."""

    def __init__(self, module: str, method: str, line: int, cause: BaseException):
        super().__init__(module, method, cause)
        self.module, self.method, self.line, self.cause = module, method, line, cause

    @property
    def fatal(self) -> bool:
        """The root's own forward: nothing can be made opaque."""
        return not self.module and self.method == "forward"

    def where(self, root: nn.Module) -> str:
        m = root.get_submodule(self.module)
        call = "" if self.method == "forward" else f".{self.method}()"
        return f"{self.module or '<root>'}{call} ({type(m).__name__}, line {self.line})"


def _failure(root: nn.Module, exc: BaseException) -> ModuleTraceFailure:
    """The innermost method of a module of ``root`` running when ``exc`` was raised. Frames of a
    leaf's real computation do not count: the failure is the call's, in the code that made it."""
    names = {id(m): name for name, m in root.named_modules()}
    found = ("", "forward", 0)
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        if code is ConcreteTracer._compute.__code__:
            break
        if "/torch/fx/" in code.co_filename or code.co_filename.endswith("torch/nn/modules/module.py"):
            continue
        obj = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if isinstance(obj, nn.Module) and id(obj) in names:
            found = (names[id(obj)], code.co_name, frame.f_lineno)
    return ModuleTraceFailure(*found, exc)


def _value(a):
    """``a`` with every proxy replaced by its value (containers keep their types)."""
    if isinstance(a, ConcreteProxy):
        return a.value
    if isinstance(a, (tuple, list)):
        out = [_value(x) for x in a]
        return type(a)(out) if type(a) in (tuple, list) else tuple(out)
    if isinstance(a, dict):
        return {k: _value(v) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(_value(a.start), _value(a.stop), _value(a.step))
    if _holds_proxies(a):
        return _rebuilder(type(a))({k: _value(v) for k, v in vars(a).items()})
    return a


def _holds_proxies(a) -> bool:
    """A plain Python object (torchvision's ImageList) whose attributes hold proxies."""
    if isinstance(a, (fx.Proxy, torch.Tensor, nn.Module, type)) or not hasattr(a, "__dict__"):
        return False
    return any(isinstance(v, fx.Proxy) for v in vars(a).values())


def _constant(obj, name: str | None = None):
    """A graph-callable named ``name`` that returns ``obj`` itself."""
    def constant():
        return obj
    constant.__name__ = constant.__qualname__ = name or f"{type(obj).__name__}_constant"
    return constant


def _width(module: str, attr: str, value: int):
    """A graph-callable standing for ``<module>.<attr>``, a width a registered block keeps."""
    width = _constant(value, f"{module.replace('.', '_')}_{attr}".lstrip("_"))
    width.width_attr = (module, attr)
    return width


_REBUILDERS: dict[type, Any] = {}


def _rebuilder(cls: type):
    """A graph-callable that makes a ``cls`` object from its attribute dict (no ``__init__`` run)."""
    if cls not in _REBUILDERS:
        def rebuild(fields: dict):
            obj = cls.__new__(cls)
            obj.__dict__.update(fields)
            return obj
        rebuild.__name__ = rebuild.__qualname__ = f"make_{cls.__name__}"
        _REBUILDERS[cls] = rebuild
    return _REBUILDERS[cls]


class ComputeError(Exception):
    """A layer or op failed on real values while tracing (the inputs do not fit the model)."""

    def __init__(self, kind: str, what: str, cause: BaseException):
        super().__init__(what, cause)
        self.kind, self.what, self.cause = kind, what, cause


class ConcreteProxy(fx.Proxy):
    """A proxy that knows the value it stands for."""

    @property
    def value(self):
        return self.tracer.values[self.node]

    @property
    def __class__(self):
        """In the model's code (not torch's, not ours), ``isinstance(x, torch.Tensor)`` holds for a
        proxy of a tensor, as it would at run time (torchvision's detection code asserts it)."""
        caller = sys._getframe(1).f_code.co_filename
        if "/torch/" in caller or caller == __file__ or "node" not in self.__dict__:
            return type(self)
        value = self.tracer.values.get(self.node)
        return type(value) if isinstance(value, torch.Tensor) else type(self)

    def __getattr__(self, k: str):
        if k.startswith("__") and k.endswith("__"):   # protocol probes (__cuda_array_interface__, ...)
            raise AttributeError(k)
        if k in _STATIC_ATTRS or k in _STATIC_METHODS:
            return getattr(self.value, k)
        return ConcreteAttribute(self, k)

    def __len__(self) -> int:
        return len(self.tracer.guard(self))

    def __index__(self) -> int:
        return operator.index(self.tracer.guard(self))

    def __int__(self) -> int:
        return int(self.tracer.guard(self))

    def __float__(self) -> float:
        return float(self.tracer.guard(self))

    def __contains__(self, item) -> bool:
        return _value(item) in self.tracer.guard(self)


class ConcreteAttribute(fx.proxy.Attribute, ConcreteProxy):
    pass


class ConcreteTracer(fx.Tracer):
    """Traces with concrete values; weighted layers and ``opaque`` modules are leaves."""

    def __init__(self, inputs: tuple, opaque: set[str], methods: set[tuple[str, str]] = frozenset()):
        super().__init__()
        self.inputs = list(inputs)
        self.opaque = opaque
        self.methods = methods   # (module, method name): called as one opaque graph call
        self.values: dict[fx.Node, Any] = {}
        self.guards: list[fx.Node] = []

    # ------------------------------------------------------------------ leaves and failures
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_weighted(m) or qualname in self.opaque or super().is_leaf_module(m, qualname)

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        made = super().create_args_for_root(root_fn, is_module, concrete_args)
        self._trace_widths()
        return made

    def _trace_widths(self) -> None:
        """Widths a registered block keeps in plain attributes (its handler's ``width_attrs``, such as
        Ultralytics' ``key_dim``) become graph nodes: sizes computed from them follow the block's
        widths after surgery instead of being literals. Put back by :func:`concrete_trace`."""
        leaves = [name for name, m in self.root.named_modules() if name in self.opaque or is_weighted(m)]
        for name, m in self.root.named_modules():
            h = handler_for(m)
            if not isinstance(h, Block) or any(name == x or name.startswith(x + ".") for x in leaves) \
                    or any(module == name for module, _ in self.methods):
                continue
            for attr in h.width_attrs:
                value = m.__dict__.get(attr)
                if type(value) is int:
                    m.__dict__[attr] = self.create_proxy("call_function", _width(name, attr, value), (), {})

    # ------------------------------------------------------------------ values
    def create_arg(self, a):
        if _holds_proxies(a):   # an object carrying proxies into a leaf: build it in the graph
            return self.create_proxy("call_function", _rebuilder(type(a)), (dict(vars(a)),), {}).node
        try:
            return super().create_arg(a)
        except NotImplementedError:   # a plain object (torchvision's LevelMapper): a constant of the graph
            if isinstance(a, (fx.Proxy, torch.Tensor, nn.Module)) or not hasattr(a, "__dict__"):
                raise
            return self.create_proxy("call_function", _constant(a), (), {}).node

    def proxy(self, node: fx.Node) -> ConcreteProxy:
        return ConcreteProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        value = self._compute(kind, target, args, kwargs)
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, None)
        self.values[p.node] = value
        return p

    def _compute(self, kind, target, args, kwargs):
        try:
            with _unpatched():   # fx patches Module.__call__/__getattr__ while tracing: run the real ones
                return self._run(kind, target, _value(args), _value(kwargs))
        except Exception as exc:
            if kind in ("placeholder", "get_attr") or isinstance(exc, DataDependent):
                raise
            raise ComputeError(kind, target if kind == "call_module" else _ops.op_name(kind, target), exc) from exc

    def _run(self, kind, target, a, kw):
        if kind == "call_method" and target in _DATA_METHODS:
            raise DataDependent(f"Tensor.{target}() reads tensor values")
        if kind == "placeholder":
            return self._next_input(target, a)
        if kind == "get_attr":
            obj = self.root
            for part in target.split("."):
                obj = getattr(obj, part)
            return obj
        if kind == "call_module":
            return self.root.get_submodule(target)(*a, **kw)
        if kind == "call_method":
            return getattr(a[0], target)(*a[1:], **kw)
        if kind == "call_function":
            return target(*a, **kw)
        raise AssertionError(kind)

    def _next_input(self, name: str, defaults: tuple):
        if name.startswith("**"):
            return {}
        if name.startswith("*"):
            rest, self.inputs = tuple(self.inputs), []
            return rest
        if self.inputs:
            return self.inputs.pop(0)
        if defaults:
            return defaults[0]
        raise TypeError(f"forward needs argument '{name}', which the example inputs do not give")

    def guard(self, proxy: ConcreteProxy):
        """Python needs ``proxy`` as a plain value: record it and hand the value over. Values of
        tensors (not sizes) make the code data-dependent: the module running it becomes opaque."""
        value = proxy.value
        if isinstance(value, torch.Tensor):
            raise DataDependent(f"Python control flow on tensor values (node '{proxy.node.name}')")
        self.guards.append(proxy.node)
        return value

    def to_bool(self, obj: ConcreteProxy) -> bool:
        return bool(self.guard(obj))

    def iter(self, obj: ConcreteProxy):
        value = obj.value
        if isinstance(value, dict):
            return iter(list(value))
        if isinstance(value, torch.Tensor) and value.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (obj[i] for i in range(len(value)))

    def keys(self, obj: ConcreteProxy):
        value = obj.value
        if isinstance(value, dict):
            return list(value.keys())
        return super().keys(obj)


_unpatched = fx._symbolic_trace._maybe_revert_all_patches   # torch has no public name for it


# Factories whose size/data arguments may hold proxies that torch's argument parser does not
# dispatch on (torch.zeros(B, C), torch.tensor(h)): recorded as graph calls while tracing.
_FACTORIES = ("tensor", "as_tensor", "scalar_tensor", "zeros", "ones", "empty", "full", "rand", "randn",
              "randint", "arange", "linspace", "eye")


def _has_proxy(a) -> bool:
    if isinstance(a, fx.Proxy):
        return True
    if isinstance(a, (tuple, list)):
        return any(_has_proxy(x) for x in a)
    if isinstance(a, dict):
        return any(_has_proxy(x) for x in a.values())
    return False


def _as_call(tracer: ConcreteTracer, orig, name: str):
    """``orig``, recorded as one graph call whenever it is given proxies."""
    def call(*args, **kwargs):
        if _has_proxy((args, kwargs)):
            return tracer.create_proxy("call_function", call, args, kwargs)
        return orig(*args, **kwargs)
    call.__name__ = call.__qualname__ = name
    return call


class _patched:
    """Context: torch's factories, and the methods made opaque, record graph calls while tracing."""

    def __init__(self, tracer: ConcreteTracer, root: nn.Module):
        self.tracer, self.root = tracer, root

    def __enter__(self):
        self.saved = {name: getattr(torch, name) for name in _FACTORIES}
        for name, orig in self.saved.items():
            setattr(torch, name, _as_call(self.tracer, orig, name))
        self.objects = []
        for module, method in self.tracer.methods:
            m = self.root.get_submodule(module)
            name = f"{type(m).__name__}_{method}"
            m.__dict__[method] = _as_call(self.tracer, getattr(m, method), name)
            self.objects.append((m, method))

    def __exit__(self, *exc):
        for name, orig in self.saved.items():
            setattr(torch, name, orig)
        for m, method in self.objects:
            m.__dict__.pop(method, None)
        return False


def concrete_trace(model: nn.Module, inputs: tuple, opaque: set[str],
                   methods: set[tuple[str, str]] = frozenset()) -> tuple[fx.GraphModule, list[str]]:
    """Trace ``model`` on ``inputs`` (inside :class:`preserved`). Returns the graph module and the
    guard nodes' names. Raises :class:`ModuleTraceFailure` naming the innermost module that failed."""
    tracer = ConcreteTracer(map_tensors(torch.clone, inputs), opaque, methods)
    saved = snapshot(model)   # a forward may cache proxies on its modules (torchvision's poolers)
    try:
        with _patched(tracer, model):
            graph = tracer.trace(model, _defaults_after(model, len(inputs)))
        gm = fx.GraphModule(tracer.root, graph)   # before the restore: it takes fx's tensor constants
    except Exception as exc:
        raise _failure(model, exc) from exc
    finally:
        restore(saved)
    return gm, [n.name for n in tracer.guards if n.graph is graph]


def _defaults_after(model: nn.Module, given: int) -> dict[str, Any] | None:
    """Arguments of ``forward`` past the example inputs, at their defaults (``targets=None``): fixed
    values, so ``if targets is not None`` takes the inference branch as at run time."""
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    fixed = {p.name: p.default for p in params[given:] if p.default is not p.empty}
    return fixed or None




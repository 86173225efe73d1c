"""Walking a model that may not trace whole: opaque modules, and the children inside them.

The concrete trace makes code it cannot read opaque where it runs (a module, or one method of it).
An opaque module's own layers are not lost: while the walk runs it, hooks catch what each of its
children is called with, and every child that owns weights is traced and walked on those inputs
into the same record, its inputs and outputs kept whole (they cross the opaque code). So a
detector's RPN head keeps its hidden conv prunable even though the RPN's proposal code is opaque.
"""
from __future__ import annotations

import inspect

from torch import nn

from ..forward import first_line, map_tensors
from ..layers import is_weighted
from . import _walk
from ._values import flat_tensors
from ._tracer import ComputeError, ModuleTraceFailure, concrete_trace


class TraceError(ValueError):
    """The model cannot be traced, or the example inputs do not fit it."""


def _input_error(model: nn.Module, inputs: tuple, what: str, exc: BaseException) -> TraceError:
    shapes = ", ".join(str(tuple(x.shape)) for x in flat_tensors(inputs))
    what = f"{what}: " if what else ""
    return TraceError(f"example inputs of shape {shapes} do not fit {type(model).__name__}: {what}"
                      f"{first_line(exc)}")


def _trace_error(model: nn.Module, failure: ModuleTraceFailure) -> TraceError:
    return TraceError(f"cannot trace {type(model).__name__} in {failure.where(model)}: "
                      f"{first_line(failure.cause)}; make the model's own forward traceable by torch.fx, "
                      f"or move that code into a submodule")


def _trace_graph(model: nn.Module, inputs: tuple, opaque: set[str], auto: dict[str, str]):
    """Concrete-trace ``model``. Code that cannot be traced (data-dependent control flow, objects a
    graph cannot hold) is made opaque where it runs: the module, or the method of it (detection
    post-processing called from ``forward``); ``auto`` gets each with its reason; then it retries."""
    methods: set[tuple[str, str]] = set()
    while True:
        try:
            return concrete_trace(model, inputs, opaque | set(auto), methods)
        except ModuleTraceFailure as failure:
            cause = failure.cause
            key = failure.module if failure.method == "forward" else f"{failure.module}.{failure.method}()"
            leaf = isinstance(cause, ComputeError) and cause.kind == "call_module"
            if failure.fatal or key in auto or leaf:
                if isinstance(cause, ComputeError):
                    raise _input_error(model, inputs, cause.what, cause.cause) from cause.cause
                raise _trace_error(model, failure) from cause
            inner = cause.cause if isinstance(cause, ComputeError) else cause
            auto[key] = f"{type(inner).__name__}: {first_line(inner)} (line {failure.line})"
            if failure.method != "forward":
                methods.add((failure.module, failure.method))


def detached(value):
    """A copy of the (nested) inputs that no later in-place op or autograd graph can reach."""
    return map_tensors(lambda t: t.detach().clone(), value)


def freeze_tied(model: nn.Module, rec: _walk.Record) -> None:
    """A parameter shared by several modules (tied weights) would come apart if one were sliced:
    freeze the channels of every layer holding one."""
    owners: dict[int, dict[int, list[str]]] = {}   # parameter -> owning module object -> its names
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for p_name, p in mod._parameters.items():
            if p is not None:
                owners.setdefault(id(p), {}).setdefault(id(mod), []).append(f"{mod_name}.{p_name}".lstrip("."))
    for by_module in owners.values():
        if len(by_module) < 2:   # one module reached by two paths is shrunk once: nothing comes apart
            continue
        names = [n for ns in by_module.values() for n in ns]
        modules = {n.rpartition(".")[0] for n in names}
        for s in rec.sites:
            if s.module in modules:
                rec.frozen.append((s.ids, f"{names[0]} is tied to {names[1]} (one shared parameter)"))


def walk(model: nn.Module, inputs: tuple, opaque: set[str], rec: _walk.Record, report: dict[str, str],
         prefix: str = "") -> None:
    """Trace and walk ``model`` (the whole model, or a child of an opaque module at ``prefix``) into
    ``rec``; ``report`` gets every module made opaque, by qualified name, with the reason."""
    auto: dict[str, str] = {}
    gm, guards = _trace_graph(model, inputs, opaque, auto)
    report.update({prefix + k: v for k, v in auto.items()})
    modules = {k for k in auto if not k.endswith(")")}
    captured: dict[str, tuple] = {}
    hooks = [child.register_forward_pre_hook(_capture(captured, f"{name}.{cname}"), with_kwargs=True)
             for name in modules for cname, child in model.get_submodule(name).named_children()
             if any(True for _ in child.parameters()) and not is_weighted(child)]
    boundary = f"crosses the opaque module {prefix.rstrip('.')}" if prefix else None
    try:
        _walk.run(gm, inputs, opaque | modules, guards, rec=rec, prefix=prefix, boundary=boundary)
    except _walk.InputError as exc:
        raise _input_error(model, inputs, "", exc) from exc
    finally:
        for h in hooks:
            h.remove()
    for name, args in captured.items():
        try:
            walk(model.get_submodule(name), args, set(), rec, report, f"{prefix}{name}.")
        except TraceError as exc:
            report[prefix + name] = f"its weights stay whole: {first_line(exc)}"


def _capture(captured: dict, name: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict):
        if name not in captured:
            try:
                bound = inspect.signature(module.forward).bind(*args, **kwargs)
            except TypeError:
                return None
            if not bound.kwargs:
                captured[name] = detached(tuple(bound.args))
        return None
    return hook

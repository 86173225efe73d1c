"""The width spec of a pruned model: per module, its width attributes and the shape of each tensor.

:func:`describe` records it from a pruned model; :func:`check` and :func:`resize` bring a fresh,
unpruned instance of the same architecture to those widths, in place, so that an ordinary state_dict
loads into it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..layers import handler_for

__all__ = [
    "ArchitectureMismatch",
    "ModuleSpec",
    "SpecError",
    "WeightsMismatch",
    "check",
    "describe",
    "resize",
]

Shape = tuple[int, ...]
Width = int | tuple[int, ...]

class SpecError(Exception):
    """The spec does not fit the model; the message says why, without naming the file."""


class ArchitectureMismatch(SpecError):
    """The model's modules differ from the saved ones (names, classes or tensor names)."""


class WeightsMismatch(SpecError):
    """The stored weights differ from the spec (missing tensor or other shape)."""


def width_attrs(module: nn.Module) -> tuple[str, ...]:
    """Names of the width attributes of ``module`` (empty for types surgery does not resize)."""
    h = handler_for(module)
    return h.width_attrs if h is not None else ()


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor | None]]:
    """The module's own parameters and buffers, ``None`` entries (e.g. ``bias=False``) included."""
    yield from module._parameters.items()
    yield from module._buffers.items()


def _int_tuple(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(type(v) is int for v in value):
        raise ValueError(f"expected a list of ints, got {value!r}")
    return tuple(value)


def _width(value: Any) -> Width:
    return value if type(value) is int else _int_tuple(value)


@dataclass(frozen=True)
class ModuleSpec:
    """One module's class name, width attributes and tensor shapes (``None``: no tensor)."""

    type: str
    attrs: Mapping[str, Width]
    tensors: Mapping[str, Shape | None]

    @classmethod
    def of(cls, module: nn.Module) -> ModuleSpec:
        """Record ``module`` as it is now."""
        return cls(
            type=type(module).__name__,
            attrs={a: _width(getattr(module, a)) for a in width_attrs(module)},
            tensors={n: None if t is None else tuple(t.shape) for n, t in _own_tensors(module)},
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: tuples become lists."""
        return {
            "type": self.type,
            "attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.attrs.items()},
            "tensors": {k: None if s is None else list(s) for k, s in self.tensors.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> ModuleSpec:
        """Parse :meth:`to_json` output; raise ``ValueError``, ``KeyError`` or ``TypeError`` if malformed."""
        if not isinstance(data["type"], str):
            raise ValueError(f"type must be a string, got {data['type']!r}")
        return cls(
            type=data["type"],
            attrs={str(k): _width(v) for k, v in data["attrs"].items()},
            tensors={str(k): None if s is None else _int_tuple(s) for k, s in data["tensors"].items()},
        )


def describe(model: nn.Module) -> dict[str, ModuleSpec]:
    """Spec of every module of ``model`` that owns a tensor or a width attribute."""
    specs = {name: ModuleSpec.of(m) for name, m in model.named_modules()}
    return {name: s for name, s in specs.items() if s.tensors or s.attrs}


def _key(module_name: str, tensor_name: str) -> str:
    return f"{module_name}.{tensor_name}" if module_name else tensor_name


def _is_persistent(module: nn.Module, name: str) -> bool:
    return name in module._parameters or name not in module._non_persistent_buffers_set


def check(model: nn.Module, specs: Mapping[str, ModuleSpec], state: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`SpecError` unless ``model`` can be resized to ``specs`` and load ``state``.

    Checks that the modules match by name and class, that every recorded tensor exists in the
    module, and that each recorded shape equals that of the stored tensor. Changes nothing.
    """
    modules = dict(model.named_modules())
    for name, spec in specs.items():
        module = modules.get(name)
        if module is None or type(module).__name__ != spec.type:
            found = "not found" if module is None else f"is a {type(module).__name__}"
            raise ArchitectureMismatch(f"module {name!r} ({spec.type}) {found} in the model")
        if unknown := sorted(spec.tensors.keys() - ModuleSpec.of(module).tensors.keys()):
            raise ArchitectureMismatch(f"module {name!r} ({spec.type}) has no tensor {unknown[0]!r}")
    current = describe(model)
    if extra := sorted(current.keys() - specs.keys()):
        raise ArchitectureMismatch(f"the model's module {extra[0]!r} ({current[extra[0]].type}) "
                                   "was not saved")
    for name, spec in specs.items():
        _check_widths(modules[name], name, spec)
        for tname, shape in spec.tensors.items():
            _check_tensor(modules[name], name, tname, shape, state)
    expected = {_key(name, t) for name, spec in specs.items() for t, shape in spec.tensors.items()
                if shape is not None and _is_persistent(modules[name], t)}
    if extra := sorted(state.keys() - expected):
        raise WeightsMismatch(f"the weights hold tensor {extra[0]!r}, which pruning.json does not describe")


def _check_widths(module: nn.Module, name: str, spec: ModuleSpec) -> None:
    """Widths are positive and agree with the tensors (an edited ``out_channels = -3`` is refused)."""
    for attr, value in spec.attrs.items():
        if any(v < 1 for v in (value if isinstance(value, tuple) else (value,))):
            raise SpecError(f"module {name!r} ({spec.type}): {attr} = {value} is not a width")
    h = handler_for(module)
    implied = h.implied_widths(module, dict(spec.attrs), dict(spec.tensors)) if h is not None else {}
    for attr, value in implied.items():
        if attr in spec.attrs and spec.attrs[attr] != value:
            raise SpecError(f"module {name!r} ({spec.type}): {attr} = {spec.attrs[attr]} but its tensors "
                            f"give {value}")


def _check_tensor(module: nn.Module, name: str, tname: str, shape: Shape | None,
                  state: Mapping[str, torch.Tensor]) -> None:
    key = _key(name, tname)
    if not _is_persistent(module, tname):
        old = module._buffers[tname]
        if shape != (None if old is None else tuple(old.shape)):
            raise SpecError(f"non-persistent buffer {key!r} changed shape and its values were not saved")
    elif shape is not None and key not in state:
        raise WeightsMismatch(f"tensor {key!r} is recorded with shape {shape} but missing from the weights")
    elif shape is not None and tuple(state[key].shape) != shape:
        raise WeightsMismatch(f"tensor {key!r} has shape {tuple(state[key].shape)} in the weights but "
                              f"{shape} in pruning.json")


def _sibling(module: nn.Module) -> torch.Tensor | None:
    """Any tensor the module owns: the dtype and device a newly added tensor should take."""
    return next((t for _, t in _own_tensors(module) if t is not None), None)


def _resized(old: torch.Tensor | None, is_param: bool, shape: Shape, module: nn.Module) -> torch.Tensor:
    like = old if old is not None else _sibling(module)
    data = torch.empty(shape, dtype=like.dtype if like is not None else torch.get_default_dtype(),
                       device=like.device if like is not None else None)
    if not is_param:
        return data
    return nn.Parameter(data, requires_grad=True if old is None else old.requires_grad)


def resize(model: nn.Module, specs: Mapping[str, ModuleSpec]) -> None:
    """Resize ``model`` in place to ``specs`` (call :func:`check` first).

    A tensor whose shape changes is replaced by an uninitialised one of the same kind (Parameter or
    buffer, same ``requires_grad``, dtype and device); a tensor shared by several modules is replaced
    by one shared tensor, so ties survive. A ``None`` entry that now has a shape (a folded bias) gets
    a new tensor; width attributes are set to the recorded values.
    """
    modules = dict(model.named_modules())
    replaced: dict[int, torch.Tensor] = {}
    for name, spec in specs.items():
        module = modules[name]
        for tname, shape in spec.tensors.items():
            old = getattr(module, tname)
            if shape == (None if old is None else tuple(old.shape)):
                continue
            if shape is None:
                setattr(module, tname, None)
                continue
            if old is None or id(old) not in replaced:
                new = _resized(old, tname in module._parameters, shape, module)
                if old is not None:
                    replaced[id(old)] = new
            setattr(module, tname, new if old is None else replaced[id(old)])
        for attr, value in spec.attrs.items():
            setattr(module, attr, value)

"""Method configs to and from plain dicts: a recipe's ``[method]`` table is a serialised config.

``to_dict(Slimming(sparsity=1e-5))`` gives every field (an ``Optim`` as a nested dict, a criterion by
its name, tuples as lists); ``from_dict(Slimming, {...})`` checks each key and value against the
field's type, then lets the config check itself. Errors are one-line ``ValueError``s naming the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from .. import criteria
from ..train import Optim


def to_dict(config) -> dict[str, Any]:
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}


def _plain(v):
    if isinstance(v, Optim):
        return to_dict(v)
    if type(v) in criteria.NAMES.values():
        return criteria.name_of(v)
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def from_dict(cls: type, values: Mapping[str, Any]):
    """A ``cls`` config from ``values`` (missing keys take the config's defaults)."""
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in values:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} for {cls.__name__}; allowed: {', '.join(allowed)}")
    return cls(**{k: _typed(k, v, hints[k]) for k, v in values.items()})


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _typed(key: str, v, hint):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for i, option in enumerate(options):
            try:
                return _typed(key, v, option)
            except ValueError:
                if i == len(options) - 1:
                    raise
    if hint is Optim:
        if isinstance(v, Optim):
            return v
        if not isinstance(v, Mapping):
            raise ValueError(f"{key}={v!r} must be a table of Optim settings (e.g. {{lr = 0.05}})")
        return from_dict(Optim, v)
    if hint is criteria.Criterion:
        if isinstance(v, str):
            return criteria.by_name(v)
        return v if callable(v) else _bad(key, v, f"a criterion name ({', '.join(criteria.NAMES)})")
    if hint in _NAMES:
        ok = isinstance(v, hint) and (hint is bool or not isinstance(v, bool))
        if hint is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        return v if ok else _bad(key, v, _NAMES[hint])
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            _bad(key, v, "a list")
        return tuple(_typed(key, x, args[0]) for x in v)
    if origin in (Mapping, dict, typing.Mapping):
        if not isinstance(v, Mapping):
            _bad(key, v, "a table")
        return {str(k): _typed(f"{key}.{k}", x, args[1]) for k, x in v.items()}
    return v


def _bad(key: str, v, want: str):
    raise ValueError(f"{key}={v!r} must be {want}")

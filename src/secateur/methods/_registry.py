"""One entry point for every method: ``compress(model, config, ...)`` dispatches on the config's type.

A method is one module with a frozen config, its verb, and one :func:`register` call naming what the
method needs (a training loader, calibration data) and which of its config fields a recipe's
``[finetune]`` section fills. The CLI and the benchmarks know methods only through this registry.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Data:
    """What a method may read: the example inputs, a training loader, calibration data, a test loader."""

    example_inputs: Any
    train_loader: Any = None
    calibration: Any = None
    eval_loader: Any = None


@dataclass(frozen=True)
class Method:
    name: str                                  # in recipes: [method] name = "..."
    config: type                               # its frozen config class
    run: Callable                              # run(model, config, data: Data, **how) -> Result
    needs: tuple[str, ...] = ()                # Data fields it cannot run without
    finetune: Mapping[str, str] = field(default_factory=dict)   # [finetune] key -> config field
    files: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # recipe key -> (field, JSON key)


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    _METHODS[method.name] = method
    return method


def methods() -> dict[str, Method]:
    """Every registered method, by its recipe name."""
    return dict(_METHODS)


def method_named(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"name={name!r}; allowed: {', '.join(_METHODS)}")
    return _METHODS[name]


def method_for(config) -> Method:
    found = next((m for m in _METHODS.values() if type(config) is m.config), None)
    if found is None:
        raise TypeError(f"no method takes a {type(config).__name__} config; give one of "
                        f"{', '.join(m.config.__name__ for m in _METHODS.values())}")
    return found


def compress(model: nn.Module, config, *, example_inputs, train_loader=None, calibration=None, eval_loader=None,
             checkpoint=None, resume: bool = False, progress: bool = True, seed: int = 0,
             compile: bool = False, recalibrate: int = 20, distill: bool = False):
    """Run the method ``config`` configures on a copy of ``model`` (never changed): ``Slimming(...)``,
    ``ISTA(...)``, ``Magnitude(...)``, ``ThiNet(...)``, ``ChannelPruning(...)`` or ``OneShot(...)``.
    Returns a :class:`Result` (the new model and one record per stage). ``calibration``: a loader of
    a few hundred training images (``secateur.data.calibration``) for data-driven methods; the run
    options are ``secateur.train.fit``'s, each training stage checkpointed under ``checkpoint``;
    ``recalibrate``: batches of training data (else calibration data) on which BatchNorm statistics
    are re-estimated after every cut (0: off; records "recalibrated"); ``distill``: fine-tune with the
    unpruned model as teacher."""
    method = method_for(config)
    data = Data(example_inputs, train_loader, calibration, eval_loader)
    missing = [n for n in method.needs if getattr(data, n) is None]
    if missing:
        raise ValueError(f"{method.name} ({type(config).__name__}) needs {missing[0]}=")
    return method.run(model, config, data, checkpoint=checkpoint, resume=resume, progress=progress, seed=seed,
                      compile=compile, recalibrate=recalibrate, distill=distill)

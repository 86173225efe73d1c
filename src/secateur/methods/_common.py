"""Machinery the training-time methods share: BN layers, per-stage records, how stages train."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..layers import is_batchnorm
from ..forward import eval_mode
from ..measure import count_macs, count_params
from ..train import Distill, evaluate, fit, recalibrate_bn
from ._records import StageRecord


@dataclass
class Result:
    """What a method returns: the final ``model`` (a new object) and one record per stage, e.g.
    ``{"stage": "pruned", "pass": 0, "params": ..., "macs": ..., "acc": ...}``."""

    model: nn.Module
    records: list[StageRecord] = field(default_factory=list)
    masks: dict[str, torch.Tensor] | None = None   # unstructured methods: True where a weight is kept
    history: list[dict] = field(default_factory=list)   # the last training run's per-epoch log (fit's)

    def last(self, stage: str) -> StageRecord:
        return next(r for r in reversed(self.records) if r.stage == stage)


def bn_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every BatchNorm with a learnable scale, by module name."""
    return {n: m for n, m in model.named_modules() if is_batchnorm(m) and m.weight is not None}


def record(stage: str, model: nn.Module, example_inputs, eval_loader=None, **extras) -> StageRecord:
    """Params, MACs (FlopCounterMode) and, with ``eval_loader``, test accuracy of ``model`` now."""
    device = next(model.parameters()).device
    x = example_inputs.to(device) if isinstance(example_inputs, torch.Tensor) else example_inputs
    with torch.no_grad(), eval_mode(model):
        macs = count_macs(model, x)
    acc = evaluate(model, eval_loader)["acc"] if eval_loader is not None else None
    return StageRecord(stage, count_params(model), macs, acc, extras)


@dataclass(frozen=True)
class Stages:
    """How a method runs its stages, the same for every method: ``secateur.train.fit``'s run options,
    with each named stage checkpointed in its own sub-directory of ``checkpoint`` so that
    ``resume=True`` continues every stage; ``recalibrate``: batches of training data on which every
    BatchNorm's statistics are re-estimated after each cut (0: off); ``distill``: fine-tune with the
    unpruned model as teacher (``secateur.train.Distill``)."""

    checkpoint: str | Path | None = None
    resume: bool = False
    progress: bool = True
    seed: int = 0
    compile: bool = False
    recalibrate: int = 20
    distill: bool = False

    def __post_init__(self):
        check_epochs(recalibrate=self.recalibrate)

    def fit(self, model: nn.Module, train_loader, stage: str, *, teacher: nn.Module | None = None,
            callbacks=(), **kw) -> list[dict]:
        """``teacher``: the unpruned model, used (a copy of it) when ``distill`` is on."""
        path = None if self.checkpoint is None else Path(self.checkpoint) / stage
        if self.distill and teacher is not None:
            callbacks = [*callbacks, Distill(copy.deepcopy(teacher))]
        return fit(model, train_loader, checkpoint=path, resume=self.resume, progress=self.progress, seed=self.seed,
                   compile=self.compile, callbacks=callbacks, **kw)

    def cut(self, result: Result, model: nn.Module, example_inputs, loader, eval_loader=None,
            **extras) -> nn.Module:
        """Record the model just cut as "pruned"; then, unless ``recalibrate`` is 0, ``loader`` is None
        or the model has no BatchNorm, re-estimate its BN statistics on ``loader`` and record
        "recalibrated". Returns the model to go on with."""
        result.records.append(record("pruned", model, example_inputs, eval_loader, **extras))
        if not self.recalibrate or loader is None or not any(is_batchnorm(m) for m in model.modules()):
            return model
        model = recalibrate_bn(model, loader, batches=self.recalibrate, copy=False)
        result.records.append(record("recalibrated", model, example_inputs, eval_loader, **extras))
        return model


def check_epochs(**epochs: int) -> None:
    """Each value an integer >= 0, else one line naming it."""
    for name, value in epochs.items():
        if not (isinstance(value, int) and value >= 0):
            raise ValueError(f"{name}={value!r} must be an integer >= 0")

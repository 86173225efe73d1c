"""Han et al. (NIPS 2015): prune connections below quality x std per layer, retrain with the mask held,
repeat. The result is a sparse model of the same shape: smaller on disk (``secateur.io.save_sparse``),
not faster (dense kernels do the same work on zeros).

    result = magnitude(model, train_loader, x, Magnitude(qualities=(1.0, 1.5, 2.0, 2.2), epochs=2))
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from torch import nn

from ..train import Optim
from ._common import Result, Stages, check_epochs, record
from ._registry import Data, Method, register
from ._magnitude_masks import HoldMasks, apply_masks_, magnitude_masks, sparsity


@dataclass(frozen=True)
class Magnitude:
    """qualities: one prune-and-retrain round per entry; each round removes the weights below
    quality x std of the layer (pruned weights count as zeros, so later rounds need larger values).
    epochs: retraining epochs per round. layers: module names to prune (default every conv/linear).
    values: how the kept weights are stored when the result is saved sparse (fp32, fp16 or int8)."""

    qualities: tuple[float, ...] = (1.0, 1.5, 2.0, 2.2)
    epochs: int = 2
    layers: tuple[str, ...] | None = None
    optim: Optim = field(default_factory=lambda: Optim(lr=0.01))
    values: str = "fp16"

    def __post_init__(self):
        if not self.qualities or any(not (isinstance(q, (int, float)) and q >= 0) for q in self.qualities):
            raise ValueError(f"qualities={self.qualities!r} must be a non-empty sequence of numbers >= 0")
        check_epochs(epochs=self.epochs)
        if self.values not in ("fp32", "fp16", "int8"):
            raise ValueError(f"values={self.values!r}; allowed: fp16, int8, fp32")


def magnitude(model: nn.Module, train_loader, example_inputs, config: Magnitude = Magnitude(), *,
              eval_loader=None, **how) -> Result:
    """Iterative magnitude pruning of a copy of ``model``. Records per round: "pruned" (before
    retraining) and "retrained", each with ``nonzero``, ``total`` and ``compression`` (total/nonzero)
    over the pruned layers; ``result.masks`` holds the final masks. ``how``: the run options every
    method takes (``Stages``), BN statistics recalibrated after every cut ("recalibrated").
    """
    teacher, model = model, copy.deepcopy(model)
    result = Result(model, [record("baseline", model, example_inputs, eval_loader)])
    masks, stages = None, Stages(**how)
    for r, quality in enumerate(config.qualities):
        masks = magnitude_masks(model, quality, layers=config.layers, previous=masks)
        apply_masks_(model, masks)
        model = stages.cut(result, model, example_inputs, train_loader, eval_loader, **_extras(model, config, r, quality))
        result.history = stages.fit(model, train_loader, f"round{r}", epochs=config.epochs, optim=config.optim,
                                    callbacks=[HoldMasks(masks)], eval_loader=eval_loader, teacher=teacher)
        result.records.append(record("retrained", model, example_inputs, eval_loader,
                                     **_extras(model, config, r, quality)))
    result.model, result.masks = model, masks
    return result


def _extras(model: nn.Module, config: Magnitude, r: int, quality: float) -> dict:
    s = sparsity(model, config.layers)
    return dict(round=r, quality=quality, nonzero=s["nonzero"], total=s["total"], compression=s["compression"])


def _run(model, config: Magnitude, data: Data, **how) -> Result:
    return magnitude(model, data.train_loader, data.example_inputs, config, eval_loader=data.eval_loader, **how)


register(Method("han", Magnitude, _run, needs=("train_loader",), finetune={"optim": "optim"}))

"""Weight-level magnitude pruning (Han et al., "Learning both Weights and Connections", NIPS 2015).

Per layer, a connection is removed when ``|w| < quality * std``; the network is then retrained with
the mask held (:class:`HoldMasks`) and the two steps repeated. Masks are boolean tensors keyed by
parameter name (``"features.0.weight"``), True where the weight is kept. The weights stay dense: the
gain is in storage (see :func:`secateur.io._sparse.save_sparse`), not in speed.

A typical round::

    masks = magnitude_masks(model, 1.0, previous=masks)   # prune
    apply_masks_(model, masks)
    fit(model, ..., callbacks=[HoldMasks(masks)])          # retrain with the mask held
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from secateur.train import Callback

__all__ = ["HoldMasks", "apply_masks_", "magnitude_masks", "prunable_weights", "sparsity"]

WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def prunable_weights(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Parameter]:
    """``{parameter name: weight}`` of every ``nn.Conv*`` / ``nn.Linear`` in ``model``, or of the
    modules named in ``layers`` (each must be one of those; ValueError otherwise)."""
    modules = dict(model.named_modules())
    if layers is None:
        names = [n for n, m in modules.items() if isinstance(m, WEIGHT_LAYERS)]
    else:
        names = list(dict.fromkeys([layers] if isinstance(layers, str) else layers))
        for name in names:
            if not isinstance(modules.get(name), WEIGHT_LAYERS):
                found = "no such module" if name not in modules else type(modules[name]).__name__
                raise ValueError(f"layers: {name!r} is not a Conv or Linear module of the model ({found})")
    out = {}
    for name in names:
        w = modules[name].weight
        if isinstance(w, nn.Parameter) and not isinstance(w, nn.parameter.UninitializedParameter):
            out[f"{name}.weight" if name else "weight"] = w
    return out


def _check_masks(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], what: str) -> None:
    for key, m in masks.items():
        if key not in params:
            raise ValueError(f"{what}: {key!r} is not a parameter of the model")
        if tuple(m.shape) != tuple(params[key].shape):
            raise ValueError(f"{what}: mask {key!r} has shape {tuple(m.shape)}, "
                             f"the weight {tuple(params[key].shape)}")


@torch.no_grad()
def magnitude_masks(model: nn.Module, quality: float, *, layers: Iterable[str] | None = None,
                    previous: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Han's per-layer rule: keep ``w`` where ``|w| >= quality * std``; return boolean masks.

    ``std`` is the (population) standard deviation of the layer's weights as they are now, the
    weights removed in earlier rounds counting as zeros (as in Han's Caffe code): the std shrinks as
    the layer empties, so each round needs a larger ``quality`` to prune further, and a round can
    never wipe out a layer's survivors the way a std of the survivors alone would. Under the Gaussian
    approximation ``quality = 1`` keeps about 31.7% of a fresh layer, ``quality = 1.645`` about 10%.

    ``layers``: module names to prune (default: every Conv and Linear). ``previous``: masks from an
    earlier round, combined by AND (a removed weight never comes back); masks of ``previous`` for
    layers not selected now are returned unchanged. Masks are on their weight's device.
    """
    quality = float(quality)
    if not quality >= 0:
        raise ValueError(f"quality must be >= 0 (threshold = quality * std of the layer), got {quality}")
    previous = dict(previous or {})
    _check_masks(dict(model.named_parameters()), previous, "previous")
    out = {k: m.to(dtype=torch.bool, copy=True) for k, m in previous.items()}
    for key, w in prunable_weights(model, layers).items():
        keep = out[key].to(w.device) if key in out else None
        kept = w.float() if keep is None else torch.where(keep, w.float(), 0)
        threshold = quality * kept.std(correction=0).item()
        out[key] = w.abs() >= threshold if keep is None else keep & (w.abs() >= threshold)
    return out


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero, in place, the weights where ``masks`` is False; return ``model``."""
    params = dict(model.named_parameters())
    _check_masks(params, masks, "masks")
    for key, m in masks.items():
        p = params[key]
        p.masked_fill_(~m.to(device=p.device, dtype=torch.bool), 0)
    return model


class HoldMasks(Callback):
    """Hold pruned weights at zero while retraining (a :class:`~secateur.train._callbacks.Callback`).

    ``after_backward`` zeroes their gradients; ``after_step`` zeroes the weights again, so momentum
    and weight decay cannot revive them. ``on_fit_begin`` moves the masks to the weights' device
    and applies them. The masks are saved in checkpoints as uint8 under ``"mask.<parameter name>"``.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.masks = {k: m.to(dtype=torch.bool, copy=True) for k, m in masks.items()}

    def _pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        params = dict(model.named_parameters())
        _check_masks(params, self.masks, "HoldMasks")
        for key, m in self.masks.items():
            if m.device != params[key].device:
                self.masks[key] = m.to(params[key].device)
        return [(params[k], ~m) for k, m in self.masks.items()]

    def on_fit_begin(self, model: nn.Module) -> None:
        apply_masks_(model, self.masks)
        self._pairs(model)

    def after_backward(self, model: nn.Module) -> None:
        for p, pruned in self._pairs(model):
            if p.grad is not None:
                p.grad.masked_fill_(pruned, 0)

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        for p, pruned in self._pairs(model):
            p.masked_fill_(pruned, 0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"mask.{k}": m.to(device="cpu", dtype=torch.uint8) for k, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if bad := [k for k in state if not k.startswith("mask.")]:
            raise ValueError(f"HoldMasks state: unexpected key {bad[0]!r} (expected 'mask.<parameter name>')")
        self.masks = {k[len("mask."):]: v != 0 for k, v in state.items()}


@torch.no_grad()
def sparsity(model: nn.Module, layers: Iterable[str] | None = None) -> dict:
    """Nonzero vs total Conv/Linear weights: ``{"layers": {name: {"nonzero", "total"}}, "nonzero",
    "total", "compression"}`` where ``compression = total / nonzero`` (inf if all are zero)."""
    per = {k: {"nonzero": int(torch.count_nonzero(w)), "total": w.numel()}
           for k, w in prunable_weights(model, layers).items()}
    nonzero = sum(v["nonzero"] for v in per.values())
    total = sum(v["total"] for v in per.values())
    return {"layers": per, "nonzero": nonzero, "total": total,
            "compression": total / nonzero if nonzero else float("inf")}

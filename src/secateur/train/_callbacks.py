"""What a method adds to a training step, as a callback that ``fit`` calls at fixed points.

A step of ``fit`` is: logits = model(x); loss = cross-entropy; loss = cb.loss(...) for each callback;
backward; cb.after_backward(model); optimizer.step(); cb.after_step(model, lr). Every hook is optional.
``model`` is always the plain module (never the DDP or compiled wrapper), already on its device.
"""
from __future__ import annotations

import torch
from torch import nn


class Callback:
    """Base class: override the hooks you need. Tensors that must survive an interruption go in
    :meth:`state_dict` (saved in every checkpoint as safetensors) and come back in :meth:`load_state_dict`."""

    def on_fit_begin(self, model: nn.Module) -> None:
        """Called once, after the model is on its device and before the first step."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
             loss: torch.Tensor) -> torch.Tensor:
        """Return the loss to back-propagate (e.g. add a distillation term)."""
        return loss

    def after_backward(self, model: nn.Module) -> None:
        """Gradients are in ``.grad``; change them here (e.g. a sparsity subgradient)."""

    def after_step(self, model: nn.Module, lr: float) -> None:
        """The optimiser has stepped at learning rate ``lr``; e.g. a proximal step or a mask."""

    def on_epoch_end(self, model: nn.Module, epoch: int, logs: dict) -> None:
        """``epoch`` counts from 0; ``logs`` holds this epoch's metrics (read-only by convention)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (tensors on the CPU)."""

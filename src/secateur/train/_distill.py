"""Knowledge distillation from the unpruned teacher (Hinton et al.): KL at a temperature."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._callbacks import Callback


class Distill(Callback):
    """loss = alpha * T² * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss.

    The teacher is put in eval mode on the student's device and runs without gradients; its weights
    are not changed.
    """

    def __init__(self, teacher: nn.Module, *, temperature: float = 4.0, alpha: float = 0.9):
        if not temperature > 0:
            raise ValueError(f"Distill temperature={temperature!r} must be > 0")
        if not 0 <= alpha <= 1:
            raise ValueError(f"Distill alpha={alpha!r} must be in [0, 1]")
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)

    def on_fit_begin(self, model: nn.Module) -> None:
        device = next(model.parameters()).device
        self.teacher.to(device).eval()

    def loss(self, model, x, y, logits, loss) -> torch.Tensor:
        with torch.no_grad():
            target = F.softmax(self.teacher(x) / self.temperature, dim=1)
        kd = F.kl_div(F.log_softmax(logits / self.temperature, dim=1), target, reduction="batchmean")
        return self.alpha * self.temperature ** 2 * kd + (1 - self.alpha) * loss

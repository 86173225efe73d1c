"""Leaving the model as it was: modes, gradients off, and every attribute a forward sets."""
from __future__ import annotations

import torch
from torch import nn

_MISSING = object()


def snapshot(model: nn.Module) -> dict[nn.Module, dict]:
    """Each module's attribute dict and its parameter/buffer/child tables, shallow-copied."""
    return {m: {k: (dict(v) if k in ("_parameters", "_buffers", "_modules") else v)
                for k, v in vars(m).items()} for m in model.modules()}


def restore(saved_state: dict[nn.Module, dict]) -> None:
    """Undo attributes that a forward set on the modules (Ultralytics' Detect caches anchors)."""
    for m, saved in saved_state.items():
        state = vars(m)
        for k in [k for k in state if k not in saved]:
            del state[k]
        for k, v in saved.items():
            if k in ("_parameters", "_buffers", "_modules"):
                if state[k] != v:
                    state[k].clear()
                    state[k].update(v)
            elif state.get(k, _MISSING) is not v:
                state[k] = v


class preserved:
    """Context: run the model in eval mode without gradients, then put back every module's mode
    and every attribute its forward set."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.saved = snapshot(self.model)
        self.modes = {m: m.training for m in self.model.modules()}
        self.grad = torch.no_grad()
        self.grad.__enter__()
        self.model.eval()
        return self

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        restore(self.saved)
        for m, mode in self.modes.items():
            m.training = mode
        return False

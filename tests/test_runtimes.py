"""Runtimes as backends: each installed one runs the exported model, agrees with PyTorch, and times it."""
from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

import secateur.runtimes as rt


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("name", sorted(rt.backends()))
def test_every_installed_runtime_agrees_with_pytorch_and_times_it(name) -> None:
    if name not in rt.installed():
        pytest.skip(f"{name} is not installed here")
    model, x = _net(), torch.randn(2, 3, 16, 16)
    before, threads = copy.deepcopy(model.state_dict()), torch.get_num_threads()
    p = rt.prepare(model, x, name, threads=1)
    assert p.error < 1e-4 and p.latency(repeats=3, warmup=1) > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.get_num_threads() == threads


def test_a_missing_runtime_names_the_extra_before_any_work(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)   # import openvino now fails
    with pytest.raises(rt.RuntimeMissing, match=r"runtime 'openvino' needs openvino.*secateur\[runtimes\]"):
        rt.prepare(_net(), torch.randn(1, 3, 16, 16), "openvino")
    assert "openvino" not in rt.installed()
    with pytest.raises(ValueError, match="runtime='tensorrt'; choose one of torch"):
        rt.prepare(_net(), torch.randn(1, 3, 16, 16), "tensorrt")


def test_a_runtime_that_computes_something_else_is_refused() -> None:
    with pytest.raises(rt.RuntimeMismatch, match="output 0 differs from PyTorch"):
        rt.agree([torch.ones(2, 4).numpy()], [torch.zeros(2, 4).double().numpy() + 2], "runtime 'x'", 1e-3)

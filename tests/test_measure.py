"""secateur.measure: known parameter and MAC counts, latency fields, file size, input errors."""

from __future__ import annotations

import platform
import resource
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

from secateur.forward import kept_memory
from secateur.measure import Stats, measure, table


def tiny_net() -> nn.Sequential:
    """conv 3→8 k3 pad 1, ReLU, global pool, linear 8→4."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


X = torch.randn(1, 3, 8, 8)
TINY_PARAMS = (8 * 3 * 9 + 8) + (8 * 4 + 4)
TINY_MACS = 8 * 3 * 9 * 64 + 8 * 4  # conv: out ch · in ch · k² · output pixels; linear: in · out


def test_tiny_net_counts_by_hand() -> None:
    stats = measure(tiny_net(), X, latency=False)
    assert (stats.params, stats.macs) == (TINY_PARAMS, TINY_MACS)
    assert stats.latency_ms is None and stats.latency_spread_ms is None


def test_macs_scale_with_batch_and_accept_tuple_inputs() -> None:
    stats = measure(tiny_net(), (torch.randn(3, 3, 8, 8),), latency=False)
    assert stats.macs == 3 * TINY_MACS


def test_shared_parameter_counted_once() -> None:
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    stats = measure(nn.Sequential(a, b), torch.randn(1, 4), latency=False)
    assert stats.params == 16
    assert stats.macs == 32
    assert stats.bytes == len(safetensors.torch.save({"0.weight": a.weight.detach()}))


def test_resnet18_macs_match_published_figure() -> None:
    stats = measure(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224), latency=False)
    assert stats.params == 11_689_512
    assert stats.macs == pytest.approx(1.82e9, rel=0.01)


def test_bytes_is_safetensors_size_of_state_dict() -> None:
    model = tiny_net()
    expected = len(safetensors.torch.save(model.state_dict()))
    assert measure(model, X, latency=False).bytes == expected


def test_latency_positive_and_model_untouched() -> None:
    model = tiny_net().train()
    model[0].eval()  # a mixed mode must survive too
    weight = model[0].weight
    threads = torch.get_num_threads()
    stats = measure(model, X, repeats=5, warmup=1, threads=1, channels_last=True, batch=2)
    assert stats.latency_ms is not None and stats.latency_ms > 0
    assert stats.latency_spread_ms is not None and stats.latency_spread_ms >= 0
    assert [m.training for m in model] == [False, True, True, True, True] and model.training
    assert model[0].weight is weight and weight.is_contiguous()
    assert not weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.get_num_threads() == threads
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_wrong_input_shape_is_one_line_value_error() -> None:
    model = tiny_net().train()
    with pytest.raises(ValueError) as info:
        measure(model, torch.randn(1, 1, 8, 8))
    message = str(info.value)
    assert "\n" not in message
    assert "(1, 1, 8, 8)" in message and "'0' (Conv2d)" in message and "(1, 3, 8, 8)" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert model.training and not model[0]._forward_hooks


def test_non_tensor_input_and_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError):
        measure(tiny_net(), [X, "x"])  # type: ignore[list-item]
    for bad in ({"repeats": 0}, {"warmup": -1}, {"batch": 0}, {"threads": 0}):
        with pytest.raises(ValueError, match="need repeats >= 1"):
            measure(tiny_net(), X, **bad)


def test_ratio_and_table() -> None:
    base = Stats(params=1000, macs=4000, latency_ms=2.0, latency_spread_ms=0.1, bytes=4096)
    pruned = Stats(params=500, macs=1000, latency_ms=1.0, latency_spread_ms=0.05, bytes=2048)
    assert pruned.ratio(base) == {"params_ratio": 0.5, "macs_ratio": 0.25, "latency_ratio": 0.5,
                                  "bytes_ratio": 0.5}
    no_time = Stats(params=500, macs=1000, latency_ms=None, latency_spread_ms=None, bytes=2048)
    assert "latency_ratio" not in no_time.ratio(base)
    lines = table({"base": base, "pruned": pruned}).splitlines()
    assert len(lines) == 3 and lines[2].startswith("pruned") and "(0.25x)" in lines[2]
    assert len({len(line) for line in lines}) == 1  # aligned: right-justified columns end together


def test_timing_on_several_threads_warns_once_without_passive_wait_policy(monkeypatch) -> None:
    from secateur.measure import _measure

    monkeypatch.setattr(_measure, "_warned_wait_policy", False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with pytest.warns(RuntimeWarning, match=r"OMP_WAIT_POLICY=PASSIVE.*before importing torch") as caught:
        measure(tiny_net(), X, repeats=1, warmup=0, threads=2)
        measure(tiny_net(), X, repeats=1, warmup=0, threads=2)
    assert len([w for w in caught if "OMP_WAIT_POLICY" in str(w.message)]) == 1   # once
    assert "\n" not in str(caught[0].message) and caught[0].filename == __file__


@pytest.mark.parametrize("policy, threads, latency", [("PASSIVE", 2, True), ("passive", 2, True),
                                                       ("ACTIVE", 1, True), ("ACTIVE", 2, False)])
def test_no_wait_policy_warning_when_passive_single_threaded_or_untimed(monkeypatch, policy, threads,
                                                                        latency) -> None:
    import warnings

    from secateur.measure import _measure

    monkeypatch.setattr(_measure, "_warned_wait_policy", False)
    monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measure(tiny_net(), X, latency=latency, repeats=1, warmup=0, threads=threads)
    assert not _measure._warned_wait_policy


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_timing_keeps_freed_memory_then_gives_it_back() -> None:
    """Inside kept_memory (time_forward runs in it) a 64 MiB buffer freed and made again costs no page
    faults once the heap has grown to hold it (in a fresh process glibc maps it afresh each time: 16,384
    faults of 4 KiB pages; later, what an earlier test left in the heap decides), and the memory kept
    goes back to the system on exit."""
    def faults(times: int) -> int:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(times):
            torch.ones(16 * 2**20)   # 64 MiB of float32, freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    def resident() -> int:   # bytes
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()

    with kept_memory():
        faults(3)   # warm-up: the heap grows to hold the buffer (time_forward's warm-up runs do this)
        with kept_memory():   # nested: the inner exit leaves the outer setting on
            faults(1)
        inside = faults(6)
        kept = resident()
    assert inside <= 2 * 16_384   # once the heap settles, none (a buffer's worth or two while it does)
    assert kept - resident() >= 48 * 2**20   # given back on exit

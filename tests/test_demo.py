"""``make demo`` keeps working: its main function in quick mode (32x32 ResNet-50, 2 timed runs)."""
from __future__ import annotations

import torch

from secateur.demo import main


def test_demo_prunes_to_half_the_macs_exactly(capsys) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # ~2x faster on a shared 2-core box (latency runs still use 2 threads)
    try:
        summary = main(quick=True)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "random init" in out and "fold=True" in out
    for name in ("resnet50", "vgg8"):
        s = summary[name]
        assert s["macs_ratio"] <= 0.5, (name, s["macs_ratio"])
        assert s["params_ratio"] < 1 and s["bytes_ratio"] < 1, (name, s)
        assert s["reload_err"] == 0.0, (name, s["reload_err"])   # save -> load is bit-exact
        assert s["exact_err"] < 1e-4, (name, s["exact_err"])     # cutting silenced channels moves nothing
        assert s["fold_err"] < 1e-4, (name, s["fold_err"])       # constant channels folded exactly...
        assert s["nofold_err"] > 1e-2, (name, s["nofold_err"])   # ...and without folding the output moves
    assert summary["fashion_mnist"] in (None, (4, 1, 28, 28))   # None where the dataset is not installed

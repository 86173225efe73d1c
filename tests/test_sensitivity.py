"""Li et al.'s sensitivity scan and the per-layer amounts it produces for ``prune``."""
from __future__ import annotations

import pytest
import torch

import secateur
from secateur.criteria import L1
from secateur.methods import sensitivity, sensitivity_ratios

X = torch.zeros(1, 1, 28, 28)


def vgg8():
    torch.manual_seed(0)
    return secateur.models.create_model("vgg8", in_channels=1).eval()


def test_ratios_take_the_largest_rate_within_tolerance_and_stop_at_the_first_failure():
    curves = {"a": [(0.0, 0.90), (0.2, 0.90), (0.4, 0.895), (0.6, 0.85), (0.8, 0.89)],
              "b": [(0.0, 0.90), (0.2, 0.80)],
              "c": [(0.0, 0.90), (0.5, 0.91), (0.9, 0.905)]}
    assert sensitivity_ratios(curves, tolerance=0.01) == {"a": 0.4, "c": 0.9}
    assert sensitivity_ratios(curves, tolerance=0.2) == {"a": 0.8, "b": 0.2, "c": 0.9}
    with pytest.raises(ValueError, match="tolerance"):
        sensitivity_ratios(curves, tolerance=-1)


def test_scan_covers_every_layer_and_leaves_the_model_alone():
    model = vgg8()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g))]
    curves = sensitivity(model, X, loader, rates=(0.5, 0.9), progress=False)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert list(curves) == convs
    base = curves[convs[0]][0]
    assert all(c[0] == base and [r for r, _ in c] == [0.0, 0.5, 0.9] for c in curves.values())
    assert all(0.0 <= a <= 1.0 for c in curves.values() for _, a in c)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="rates"):
        sensitivity(model, X, loader, rates=(1.5,))


def test_prune_takes_per_layer_amounts():
    model = vgg8()
    small = secateur.prune(model, X, L1(), amount={"features.0": 0.5, "features.24": 0.25})
    assert small.features[0].out_channels == 16 and small.features[24].out_channels == 192
    assert small.features[3].out_channels == 32                    # not named: whole
    with pytest.raises(ValueError, match="'features.99'"):
        secateur.prune(model, X, L1(), amount={"features.99": 0.5})
    with pytest.raises(ValueError, match="per-layer"):
        secateur.prune(model, X, L1(), amount={"features.0": 0.5}, target_macs=0.5)
    with pytest.raises(ValueError, match="max_amount="):
        secateur.prune(model, X, L1(), amount={"features.0": 0.5}, max_amount=0.5)

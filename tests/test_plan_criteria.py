"""Known answers for the criteria and the planner: amount, MAC budget, global ranking, limits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import secateur
from secateur.criteria import L1, L2, BNScale, Random
from secateur.graph import Role


class _Chain(nn.Module):
    """conv(3->8) -> BN -> ReLU -> conv(8->16) -> BN -> ReLU -> pool -> Linear: two prunable groups."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)
        with torch.no_grad():   # filter c of c1 has L1 norm proportional to c+1; c2 reversed
            self.c1.weight.copy_(torch.arange(1, 9.0).view(8, 1, 1, 1).expand(8, 3, 3, 3) / 27)
            self.c2.weight.copy_(torch.arange(16, 0, -1.0).view(16, 1, 1, 1).expand(16, 8, 3, 3) / 72)
            self.b1.weight.copy_(torch.tensor([5, 4, 3, 2, 1, 6, 7, 8.0]))

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)))
        return self.fc(y.mean((2, 3)))


X = torch.randn(2, 3, 8, 8)


def _kept(small, name):
    return getattr(small, name).out_channels


def test_l1_and_l2_keep_the_largest_filters():
    model = _Chain().eval()
    for crit in (L1(), L2()):
        small = secateur.prune(model, X, crit, amount=0.5)
        assert torch.equal(small.c1.weight[:, 0, 0, 0] * 27, torch.tensor([5, 6, 7, 8.0]))
        assert torch.equal(small.c2.weight[:, 0, 0, 0] * 72, torch.arange(16, 8, -1.0))
        assert small.c2.in_channels == 4 and small.fc.in_features == 8


def test_bn_scale_keeps_the_largest_gammas():
    small = secateur.prune(_Chain().eval(), X, BNScale(), amount=0.5)
    assert torch.equal(small.b1.weight.detach(), torch.tensor([5, 6, 7, 8.0]))


def test_random_is_seeded():
    g = secateur.trace(_Chain().eval(), X)
    grp = g.prunable[0]
    assert np.array_equal(Random(3)(grp, _Chain()), Random(3)(grp, _Chain()))
    assert not np.array_equal(Random(3)(grp, _Chain()), Random(4)(grp, _Chain()))


def test_uniform_amount_removes_the_same_fraction_of_every_group():
    small = secateur.prune(_Chain().eval(), X, L1(), amount=0.25)
    assert (_kept(small, "c1"), _kept(small, "c2")) == (6, 12)


def test_global_ranking_uses_one_threshold_on_normalised_scores():
    # normalised L1: c1 scores (c+1)/4.5, c2 scores (16-c)/8.5 -> the lowest 6 of 24 overall
    small = secateur.prune(_Chain().eval(), X, L1(), amount=0.25, global_ranking=True)
    assert _kept(small, "c1") + _kept(small, "c2") == 24 - 6
    s1 = np.arange(1, 9) / 4.5
    s2 = np.arange(16, 0, -1) / 8.5
    threshold = np.sort(np.concatenate([s1, s2]))[5]
    assert _kept(small, "c1") == (s1 > threshold).sum() and _kept(small, "c2") == (s2 > threshold).sum()


def test_max_amount_caps_every_group_under_a_global_ranking():
    small = secateur.prune(_Chain().eval(), X, L1(), amount=0.5, global_ranking=True)
    assert min(_kept(small, "c1") / 8, _kept(small, "c2") / 16) < 0.75          # uncapped: one layer loses more
    small = secateur.prune(_Chain().eval(), X, L1(), amount=0.5, global_ranking=True, max_amount=0.25)
    assert (_kept(small, "c1"), _kept(small, "c2")) == (6, 12)                  # at most a quarter of each


def test_min_channels_and_round_to():
    small = secateur.prune(_Chain().eval(), X, L1(), amount=0.9, min_channels=3)
    assert (_kept(small, "c1"), _kept(small, "c2")) == (3, 3)
    small = secateur.prune(_Chain().eval(), X, L1(), amount=0.3, round_to=4)
    assert _kept(small, "c1") % 4 == 0 and _kept(small, "c2") % 4 == 0
    assert (_kept(small, "c1"), _kept(small, "c2")) == (8, 12)   # 6 -> 8 and 12 -> 12: round up, keep more


@pytest.mark.parametrize("global_ranking", [False, True])
@pytest.mark.parametrize("target", [0.7, 0.5, 0.3])
def test_mac_target_is_met_as_flop_counter_counts_it(target, global_ranking):
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    small = secateur.prune(model, x, L1(), target_macs=target, global_ranking=global_ranking, round_to=2)
    base, cut = secateur.measure(model, x, latency=False), secateur.measure(small, x, latency=False)
    ratio = cut.macs / base.macs
    assert target - 0.01 <= ratio <= target + 1e-3, ratio   # the top-up fills the budget


def test_unreachable_target_names_the_best_reachable():
    with pytest.raises(secateur.TargetError, match=r"out of reach.*keeps 0\.\d+ of its MACs"):
        secateur.prune(_Chain().eval(), X, L1(), target_macs=0.01, min_channels=6)


def test_plan_round_trips_through_json_and_checks_its_groups():
    g = secateur.trace(_Chain().eval(), X)
    grp = next(x for x in g.prunable if any(m.site.role is Role.OUT and m.site.module == "c1" for m in x.members))
    plan = secateur.Plan({grp.index: [7, 1, 3]})
    again = secateur.Plan.from_json(plan.to_json())
    assert again == plan and again.keep[grp.index] == (1, 3, 7)
    with pytest.raises(ValueError, match="removes every channel"):
        secateur.apply(_Chain().eval(), g, secateur.Plan({grp.index: []}))
    with pytest.raises(ValueError, match="frozen"):
        frozen = next(x for x in g.groups if x.frozen)
        secateur.apply(_Chain().eval(), g, secateur.Plan({frozen.index: [0]}))

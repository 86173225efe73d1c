"""Per-layer rates chosen by recalibrated accuracy (AIMET's greedy selection, EagleEye's search)."""
import pytest
import torch
from torch.utils.data import DataLoader

import secateur
from secateur.criteria import L1
from secateur.methods import OneShot, allocate, compress
from secateur.methods.allocation import GRID, _largest
from secateur.plan import TargetError
from secateur.train import Optim, fit
from train_fixtures import separable, tiny_net

pytestmark = pytest.mark.xdist_group("train")
X = torch.zeros(1, 1, 8, 8)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = tiny_net()
    train = DataLoader(separable(512), batch_size=32, shuffle=True)
    fit(model, train, epochs=3, optim=Optim(lr=0.05), progress=False)
    return model.eval(), train


def test_the_largest_ratio_is_read_off_the_curve_linearly():
    curve = [(0.0, 1.0), (0.5, 0.8), (1.0, 0.2)]
    assert _largest(curve, 0.9) == pytest.approx(0.25)
    assert _largest(curve, 0.5) == pytest.approx(0.75)
    assert _largest(curve, 0.1) == 1.0
    assert _largest([(0.0, 1.0), (0.5, 0.4), (1.0, 0.9)], 0.8) == pytest.approx(0.5 * 0.2 / 0.6)   # first fall


def test_greedy_meets_the_budget_from_one_curve_per_group(trained):
    model, train = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = allocate(model, X, L1(), macs=0.5, loader=train, strategy="greedy", progress=False)
    assert 0.35 < a.kept <= 0.5                                 # one of 8 channels is 1/8 of conv 3
    assert a.evaluations == 2 * len(GRID) + 2                  # two groups' curves, the full model, the choice
    assert sorted(a.curves) == ["0", "3"] and all(len(c) == len(GRID) + 1 for c in a.curves.values())
    assert set(a.layers) <= {"0", "3"} and 0 <= a.score <= 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_search_scores_at_least_the_uniform_rate(trained):
    model, train = trained
    uniform = allocate(model, X, L1(), macs=0.5, loader=train, strategy="search", candidates=1, progress=False)
    searched = allocate(model, X, L1(), macs=0.5, loader=train, strategy="search", candidates=6, progress=False)
    assert searched.evaluations == 6 and searched.kept <= 0.5
    assert searched.score >= uniform.score
    assert len(set(uniform.amounts.values())) == 1             # the first candidate is the uniform rate


def test_one_shot_with_an_allocation_records_its_cost(trained):
    model, train = trained
    result = compress(model, OneShot(macs=0.5, allocation="search"), example_inputs=X, train_loader=train,
                      progress=False)
    pruned = result.last("pruned")
    assert pruned["allocation"] == "search" and pruned["allocation_evaluations"] == 32
    assert pruned["macs"] <= 0.5 * result.records[0]["macs"]


def test_a_latency_budget_is_met_on_the_runtimes_table(trained, monkeypatch):
    import secateur.runtimes as rt
    from test_runtimes import Staircase
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Staircase())
    model, train = trained
    a = allocate(model, X, L1(), latency=0.6, runtime="staircase", loader=train, strategy="search", candidates=3,
                 progress=False)
    table = rt.latency_table(model, secateur.trace(model, X), "staircase", progress=False)
    small = secateur.prune(model, X, L1(), amount=a.layers)
    assert a.kept <= 0.6 and table.predict(small) / table.total() == pytest.approx(a.kept, rel=1e-6)


@pytest.mark.parametrize("call, error, match", [
    (lambda m, t: OneShot(amount=0.5, allocation="greedy"), ValueError, "give macs= or latency="),
    (lambda m, t: allocate(m, X, L1(), loader=t), ValueError, "exactly one of macs= and latency="),
    (lambda m, t: OneShot(macs=0.5, allocation="best"), ValueError, "choose one of uniform, global, greedy, search"),
    (lambda m, t: allocate(m, X, L1(), macs=0.5, loader=t, strategy="best"), ValueError, "choose one of greedy"),
    (lambda m, t: allocate(m, X, L1(), macs=0.5, loader=list(t)[:3]), ValueError, "the loader gave 3 batches"),
    (lambda m, t: allocate(m, X, L1(), macs=0.01, loader=t, progress=False), TargetError, "out of reach"),
])
def test_bad_input_is_one_line(trained, call, error, match):
    with pytest.raises(error, match=match):
        call(*trained)

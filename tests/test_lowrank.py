"""secateur.surgery.low_rank: truncated-SVD factorisation of big Linear layers, composed with pruning and io."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import secateur
from secateur.measure import count_params
from secateur.surgery import low_rank, low_rank_ranks


class Head(nn.Module):
    """A small conv trunk with an AlexNet-style MLP head: Linear 256 -> 512 -> 512 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(256, 512), nn.ReLU(),
                                        nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _head(true_rank: int | None = None) -> Head:
    """A seeded Head in eval mode; with ``true_rank``, both hidden Linear weights have exactly that rank
    with equal singular values (so energy 0.9 keeps ``ceil(0.9 * true_rank)`` of them)."""
    torch.manual_seed(0)
    model = Head().eval()
    if true_rank is not None:
        with torch.no_grad():
            for layer in (model.classifier[1], model.classifier[3]):
                out, inp = layer.weight.shape
                u = torch.linalg.qr(torch.randn(out, true_rank))[0]
                v = torch.linalg.qr(torch.randn(inp, true_rank))[0]
                layer.weight.copy_(u @ v.T * 2.0)
    return model


def _x() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _close(y: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    torch.testing.assert_close(y, ref, rtol=0, atol=rel * float(ref.abs().max()))


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    assert "\n" not in str(error.value), str(error.value)
    return str(error.value)


@torch.no_grad()
def test_full_rank_is_exact_and_model_untouched() -> None:
    model, x = _head(), _x()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = low_rank(model, rank={"classifier.1": 256, "classifier.3": 512})
    assert low_rank_ranks(full) == {"classifier.1": 256, "classifier.3": 512}
    pair = full.classifier[3]
    assert isinstance(pair, nn.Sequential) and pair[0].bias is None and pair[1].bias is not None
    _close(full(x), model(x), 1e-5)
    # An int rank only factorises where it saves parameters: full rank never does, 200 < 256 on 512x512 does.
    assert low_rank_ranks(low_rank(model, rank=512)) == {}
    assert low_rank_ranks(low_rank(model, rank=200)) == {"classifier.3": 200}
    assert type(model.classifier[3]) is nn.Linear  # the caller's model is not changed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@torch.no_grad()
def test_energy_rank_saves_parameters_and_stays_close() -> None:
    model, x = _head(true_rank=16), _x()
    cut = low_rank(model, energy=0.9)
    assert low_rank_ranks(cut) == {"classifier.1": 15, "classifier.3": 15}  # 15/16 >= 0.9 > 14/16
    assert count_params(cut) < 0.15 * count_params(model)
    exact = low_rank(model, energy=0.999)
    assert low_rank_ranks(exact) == {"classifier.1": 16, "classifier.3": 16}
    _close(exact(x), model(x), 1e-4)
    assert count_params(exact) < 0.15 * count_params(model)


@torch.no_grad()
def test_dense_random_layer_is_left_alone() -> None:
    model = _head()  # random init: energy 0.9 needs about half the spectrum, past the break-even rank
    assert low_rank_ranks(low_rank(model, energy=0.9)) == {}
    assert count_params(low_rank(model, energy=0.9)) == count_params(model)


def test_size_threshold_ignore_and_flags() -> None:
    model = _head(true_rank=16).train()
    model.classifier[1].weight.requires_grad_(False)
    assert low_rank_ranks(low_rank(model, min_features=300)) == {"classifier.3": 15}
    assert low_rank_ranks(low_rank(model, ignore=["classifier.3"])) == {"classifier.1": 15}
    assert low_rank_ranks(low_rank(model, ignore=[model.classifier])) == {}
    cut = low_rank(model)
    assert all(m.training for m in cut.modules())
    assert [p.requires_grad for p in cut.classifier[1].parameters()] == [False, False, True]  # bias kept
    assert all(p.requires_grad for p in cut.classifier[3].parameters())


@pytest.mark.parametrize(("kwargs", "culprit"), [
    ({"energy": 0.0}, "energy=0.0"),
    ({"energy": 1.5}, "energy=1.5"),
    ({"rank": 0}, "rank=0"),
    ({"min_features": 0}, "min_features=0"),
    ({"rank": {"features.0": 4}}, "'features.0', a Conv2d"),
    ({"rank": {"classifier.9": 4}}, "'classifier.9'"),
    ({"rank": {"classifier.1": 300}}, "rank 300 for 'classifier.1'"),
    ({"ignore": ["nope"]}, "'nope'"),
])
def test_bad_arguments_one_line(kwargs: dict, culprit: str) -> None:
    with pytest.raises(ValueError) as e:
        low_rank(_head(), **kwargs)
    assert culprit in _one_line(e)


@torch.no_grad()
def test_prune_after_low_rank_and_save_load(tmp_path: Path) -> None:
    model, x = _head(true_rank=16), _x()
    cut = low_rank(model, energy=0.9)
    pruned = secateur.prune(cut, x, secateur.criteria.L1(), amount=0.5)
    ranks = low_rank_ranks(pruned)
    assert set(ranks) == {"classifier.1", "classifier.3"} and all(r < 15 for r in ranks.values()), ranks
    assert count_params(pruned) < 0.6 * count_params(cut)
    y = pruned(x)
    assert y.shape == (4, 10) and torch.isfinite(y).all()

    secateur.save(pruned, tmp_path / "lr")
    assert json.loads((tmp_path / "lr" / "pruning.json").read_text())["low_rank"] == ranks
    for fresh in (Head(), low_rank(Head(), rank=ranks)):   # load puts the pairs in, or finds them there
        again = secateur.load(tmp_path / "lr", model=fresh).eval()
        assert low_rank_ranks(again) == ranks
        assert torch.equal(again(x), y)


def test_load_low_rank_into_the_wrong_model_changes_nothing(tmp_path: Path) -> None:
    model, x = _head(true_rank=16), _x()
    secateur.save(low_rank(model, energy=0.9), tmp_path / "lr")
    other = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))   # no classifier.1: named, not touched
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(secateur.LoadError) as e:
        secateur.load(tmp_path / "lr", model=other)
    assert "classifier.1" in _one_line(e) and "fresh instance" in _one_line(e)
    assert other.state_dict().keys() == before.keys()
    wrong = Head()   # the pairs go in, then the check fails (no last Linear): the pairs come out again
    wrong.classifier[5] = nn.Identity()
    with pytest.raises(secateur.LoadError) as e:
        secateur.load(tmp_path / "lr", model=wrong)
    assert "classifier.5" in _one_line(e)
    assert type(wrong.classifier[1]) is nn.Linear and low_rank_ranks(wrong) == {}   # pairs taken out again


@torch.no_grad()
def test_low_rank_after_load_is_the_same_model(tmp_path: Path) -> None:
    model, x = _head(true_rank=16), _x()
    pruned = secateur.prune(model, x, secateur.criteria.L1(), amount=0.25)
    secateur.save(pruned, tmp_path / "p")
    loaded = secateur.load(tmp_path / "p", model=Head()).eval()
    direct, after = low_rank(pruned, energy=0.9), low_rank(loaded, energy=0.9)
    assert low_rank_ranks(after) == low_rank_ranks(direct) != {}
    assert all(torch.equal(a, b) for a, b in zip(after.state_dict().values(), direct.state_dict().values(), strict=True))
    _close(after(x), pruned(x), 0.5)  # one of 16 equal components dropped per layer: same ballpark

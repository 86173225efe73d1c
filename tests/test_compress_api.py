"""``secateur.methods.compress(model, config, ...)``: one entry point, one registry, every method."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from secateur.criteria import APoZ
from secateur.methods import (ISTA, ChannelPruning, Magnitude, OneShot, Slimming, StageRecord, ThiNet, compress,
                              from_dict, methods, to_dict)

TINY = {   # one small config per registered method: a method without one fails the test below
    "slimming": Slimming(amount=0.5, sparsity_epochs=1, finetune_epochs=1),
    "ista": ISTA(rho=10.0, sparsity_epochs=1, finetune_epochs=0),   # gammas reach zero in one step
    "han": Magnitude(qualities=(1.0,), epochs=1),
    "thinet": ThiNet(amount=0.5),
    "channel-pruning": ChannelPruning(amount=0.5, samples=32),
    "prune": OneShot(criterion=APoZ(), macs=0.6, finetune_epochs=1),
}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)),
                      batch_size=16)


@pytest.mark.parametrize("name", sorted(methods()))
def test_every_registered_method_runs_through_compress(name) -> None:
    config = TINY[name]
    assert from_dict(type(config), to_dict(config)) == config   # a recipe's [method] table is this dict
    model, data, x = _net(), _loader(), torch.randn(1, 1, 8, 8)
    before = copy.deepcopy(model.state_dict())
    result = compress(model, config, example_inputs=x, train_loader=data, calibration=data, eval_loader=data,
                      progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # the caller's model as it was
    kept = sum(p.numel() for p in result.model.parameters()) / sum(p.numel() for p in model.parameters())
    zeros = sum(int((p == 0).sum()) for p in result.model.parameters())
    assert kept < 0.9 or (result.masks is not None and zeros > 0)
    assert result.records and {"stage", "params", "macs"} <= set(result.records[-1])


def test_what_a_method_needs_and_what_no_method_takes() -> None:
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="slimming .* needs train_loader="):
        compress(_net(), Slimming(), example_inputs=x)
    with pytest.raises(ValueError, match="thinet .* needs calibration="):
        compress(_net(), ThiNet(amount=0.5), example_inputs=x)
    with pytest.raises(TypeError, match="no method takes a dict config"):
        compress(_net(), {"amount": 0.5}, example_inputs=x)


@pytest.mark.parametrize("values,expect", [
    ({"amount": "half"}, "amount='half' must be a number"),
    ({"amount": 0.5, "bogus": 1}, "unknown key 'bogus' for OneShot"),
    ({"criterion": "nope", "amount": 0.5}, "criterion='nope'"),
    ({"amount": 0.5, "finetune_optim": {"lr": 0}}, "Optim lr=0"),
    ({"layer_amounts": {"0": "x"}}, "layer_amounts.0='x' must be a number"),
])
def test_configs_from_dicts_check_every_value(values, expect) -> None:
    with pytest.raises(ValueError, match=expect.replace("(", r"\(")):
        from_dict(OneShot, values)


def test_stage_records_are_typed_versioned_and_read_back() -> None:
    data = _loader()
    result = compress(_net(), TINY["prune"], example_inputs=torch.randn(1, 1, 8, 8), train_loader=data,
                      calibration=data, eval_loader=data, progress=False)
    r = result.last("pruned")
    assert isinstance(r, StageRecord) and r.stage == "pruned" and r["macs"] == r.macs and 0 <= r.acc <= 1
    assert StageRecord.from_json(json.loads(json.dumps(r.to_json()))) == r
    assert r.to_json()["version"] == StageRecord.VERSION
    for bad, says in (({"stage": "x", "params": 1}, "needs stage"), ({"version": 9, "stage": "x"}, "version 9"),
                      ([1], "JSON object")):
        with pytest.raises(ValueError, match=says):
            StageRecord.from_json(bad)

"""Han et al. weight-level magnitude pruning: masks, holding them while training, sparse storage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from secateur.io._checkpoint import LoadError
from secateur.io._sparse import load_sparse, save_sparse, sparse_bytes
from secateur.io._state import serialized_size
from secateur.methods._magnitude_masks import (
    HoldMasks,
    apply_masks_,
    magnitude_masks,
    sparsity,
)


def net(width: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0, 0.1)
    return model


def pruned(quality: float = 1.645, **kw: int) -> nn.Module:
    model = net(**kw)
    return apply_masks_(model, magnitude_masks(model, quality))


def test_masks_follow_the_gaussian_rule_and_rounds_only_remove() -> None:
    model = net(width=64)
    masks = magnitude_masks(model, 1.0)
    assert set(masks) == {"0.weight", "3.weight", "7.weight"}
    big = masks["3.weight"]   # 36,864 normal weights: P(|z| >= 1) = 0.3173
    assert big.dtype == torch.bool and abs(big.float().mean().item() - 0.3173) < 0.02
    # std with the removed weights as zeros: s = sqrt(2 Q(1) E[z^2 | |z| >= 1]) = 0.895, so a second
    # round at quality 1.5 keeps P(|z| >= 1.5 s) / P(|z| >= 1) = 0.565 of the survivors.
    apply_masks_(model, masks)
    assert magnitude_masks(model, 1.0, previous=masks)["3.weight"].sum() == big.sum()  # 0.895 < 1
    again = magnitude_masks(model, 1.5, previous=masks)
    for key, m in again.items():
        assert not (m & ~masks[key]).any()            # AND: nothing comes back
    ratio = again["3.weight"].sum().item() / big.sum().item()
    assert abs(ratio - 0.565) < 0.03
    assert sparsity(model)["layers"]["3.weight"]["nonzero"] == big.sum().item()
    # layers=: only that layer; previous masks of other layers carried over unchanged
    only = magnitude_masks(model, 2.0, layers=["7"], previous=masks)
    assert torch.equal(only["3.weight"], masks["3.weight"])
    assert only["7.weight"].sum() < masks["7.weight"].sum()
    assert magnitude_masks(model, 0.0)["3.weight"].all()       # quality 0 prunes nothing...
    assert torch.equal(magnitude_masks(model, 0.0, previous=masks)["3.weight"], big)  # ...more


def test_sparsity_counts_and_compression() -> None:
    model = pruned(1.645)
    s = sparsity(model)
    total = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1)
    assert s["total"] == total
    assert s["nonzero"] == sum(v["nonzero"] for v in s["layers"].values())
    assert s["compression"] == pytest.approx(total / s["nonzero"])
    assert 8 < s["compression"] < 12    # quality 1.645 keeps ~10%


def test_hold_masks_keeps_pruned_weights_at_zero_under_momentum_and_decay() -> None:
    model = net()
    masks = magnitude_masks(model, 1.0)
    dead = {k: ~m for k, m in masks.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    cb = HoldMasks(masks)
    cb.on_fit_begin(model)
    params = dict(model.named_parameters())
    start = params["3.weight"].detach().clone()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        cb.after_backward(model)
        assert all((params[k].grad[d] == 0).all() for k, d in dead.items())
        opt.step()
        cb.after_step(model, 0.1)
    for k, d in dead.items():
        assert d.any() and (params[k][d] == 0).all()
    assert not torch.equal(params["3.weight"][masks["3.weight"]], start[masks["3.weight"]])
    state = cb.state_dict()
    assert set(state) == {f"mask.{k}" for k in masks} and state["mask.3.weight"].dtype == torch.uint8
    back = HoldMasks({})
    back.load_state_dict(state)
    assert all(torch.equal(back.masks[k], masks[k]) for k in masks)


def long_runs(model: nn.Module) -> nn.Module:
    """Zero a 1000-element run and the first 600 elements of the last Conv, so gaps exceed 255."""
    with torch.no_grad():
        w = model[3].weight.view(-1)
        w[:600] = 0
        w[2000:3000] = 0
        w[3000] = 0.05
    return model


@pytest.mark.parametrize("values", ["fp32", "fp16", "int8"])
def test_sparse_round_trip(tmp_path: Path, values: str) -> None:
    model = long_runs(pruned(1.645, width=64))
    path = save_sparse(model, tmp_path / "m", values=values)
    info = json.loads((path / "sparse.json").read_text())["tensors"]["3.weight"]
    assert info["nnz"] == torch.count_nonzero(model[3].weight).item()
    assert info["entries"] - info["nnz"] >= 5        # fillers: >= 2 for the first 600, >= 3 for the run
    back = load_sparse(path, net(width=64, seed=1))
    ref, got = model.state_dict(), back.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        zero = ref[key] == 0
        if key.endswith("weight") and ref[key].dim() > 1:
            assert torch.equal(got[key] == 0, zero), key     # same positions pruned
        if values == "fp32" or not key.endswith("weight") or ref[key].dim() == 1:
            assert torch.equal(got[key], ref[key]), key
        elif values == "fp16":
            torch.testing.assert_close(got[key], ref[key].half().float(), rtol=0, atol=0)
            torch.testing.assert_close(got[key], ref[key], rtol=1e-3, atol=1e-5)
        else:
            alive = ref[key][~zero]
            step = (alive.max() - alive.min()).item() / 254   # the linear initial spacing
            assert (got[key] - ref[key]).abs().max().item() <= step, key


def test_sparse_is_smaller_by_the_expected_factor(tmp_path: Path) -> None:
    model = pruned(1.645, width=128)          # ~10% of the Conv/Linear weights kept
    dense = serialized_size(model)
    fp16 = sparse_bytes(save_sparse(model, tmp_path / "fp16", values="fp16"))
    int8 = sparse_bytes(save_sparse(model, tmp_path / "int8", values="int8"))
    fp32 = sparse_bytes(save_sparse(model, tmp_path / "fp32", values="fp32"))
    kept = sparsity(model)["nonzero"] * 4 / dense       # the dense bytes of the kept weights
    assert 0.06 < kept < 0.14
    assert fp16 / dense == pytest.approx(0.75 * kept, rel=0.2)
    # per kept weight: fp16 3 B, int8 2 B, fp32 5 B (+ a few fillers) vs 4 B/weight dense at 10%
    assert fp16 / dense < 0.35 and int8 / dense < 0.25 and fp32 / dense < 0.5
    assert int8 < fp16 < fp32


def test_bad_input(tmp_path: Path) -> None:
    model = pruned(1.645)
    path = save_sparse(model, tmp_path / "m")
    with pytest.raises(FileExistsError):
        save_sparse(model, path)
    save_sparse(model, path, values="int8", overwrite=True)
    with pytest.raises(LoadError, match=r"'0\.weight' has shape"):
        load_sparse(path, net(width=16))
    other = nn.Sequential(*list(net())[:4])
    with pytest.raises(LoadError, match="not in the model"):
        load_sparse(path, other)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(LoadError, match="model.safetensors") as err:
        load_sparse(path, net())
    assert "\n" not in str(err.value)
    (path / "sparse.json").write_text("{")
    with pytest.raises(LoadError, match="sparse.json"):
        load_sparse(path, net())
    with pytest.raises(ValueError, match="quality"):
        magnitude_masks(model, -0.5)
    with pytest.raises(ValueError, match="values"):
        save_sparse(model, tmp_path / "x", values="int4")
    with pytest.raises(ValueError, match="not a Conv or Linear"):
        magnitude_masks(model, 1.0, layers=["1"])
    assert math.isinf(sparsity(apply_masks_(net(), magnitude_masks(net(), 1e9)))["compression"])


def test_iterative_magnitude_end_to_end(tmp_path):
    from torch.utils.data import DataLoader

    from secateur.io import load_sparse, save_sparse
    from secateur.methods import Magnitude, magnitude
    from secateur.train import Optim
    from train_fixtures import separable, tiny_net

    data = separable(256)
    train, test = DataLoader(data, batch_size=32, shuffle=True), DataLoader(data, batch_size=128)
    torch.manual_seed(0)
    base = tiny_net()
    from secateur.train import fit
    fit(base, train, epochs=4, optim=Optim(lr=0.05), progress=False)
    result = magnitude(base, train, torch.randn(2, 1, 8, 8),
                       Magnitude(qualities=(0.5, 1.0), epochs=2, optim=Optim(lr=0.1)),
                       eval_loader=test, progress=False)
    rounds = [r for r in result.records if r["stage"] == "retrained"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert 1 < rounds[0]["compression"] < rounds[1]["compression"]
    # the retrained weights stay zero exactly where the masks say
    for name, mask in result.masks.items():
        w = dict(result.model.named_parameters())[name]
        assert int((w[~mask] != 0).sum()) == 0
    pruned = [r for r in result.records if r["stage"] == "pruned"]
    assert all(r["acc"] > p["acc"] + 0.1 for r, p in zip(rounds, pruned))   # retraining recovers
    assert rounds[0]["acc"] > 0.9
    save_sparse(result.model, tmp_path / "s", values="fp32")
    again = load_sparse(tmp_path / "s", tiny_net())
    for k, v in result.model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)

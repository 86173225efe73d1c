"""Network Slimming and ISTA on BN scales: the training steps, gamma-W rescaling, exact zero removal."""
import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import secateur
from secateur.methods.ista import ISTA, ProximalL1, ista, penalties, rescale
from secateur.methods.slimming import Slimming, SparsityL1, prune_by, slimming
from secateur.measure import count_params
from secateur.plan import Target
from secateur.train import Optim, fit
from train_fixtures import separable, tiny_net

pytestmark = pytest.mark.xdist_group("train")


def _exact_net() -> nn.Module:
    """Every BN is read by a 1x1 conv or by Linear after pooling: folding is exact there."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AvgPool2d(4), nn.Flatten(), nn.Linear(64, 4))


def _loaders():
    data = separable(256)
    return DataLoader(data, batch_size=32, shuffle=True), DataLoader(data, batch_size=128)


X = torch.randn(4, 1, 8, 8)


def test_sparsity_subgradient_is_added_to_gamma_grads():
    model = tiny_net()
    model(X).sum().backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    cb = SparsityL1(1e-2)
    cb.on_fit_begin(model)
    cb.after_backward(model)
    for n, p in model.named_parameters():
        is_gamma = n in ("1.weight", "4.weight")
        expected = before[n] + 1e-2 * torch.sign(p) if is_gamma else before[n]
        torch.testing.assert_close(p.grad, expected, msg=n)


def test_proximal_step_reaches_exact_zero():
    model = tiny_net()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -0.5, 0.01, -0.01, 0.02, 2.0, -2.0, 0.0]))
    cb = ProximalL1({"1": 0.1})
    cb.on_fit_begin(model)
    cb.after_step(model, lr=0.15)    # threshold lr * rho = 0.015
    expected = torch.tensor([0.485, -0.485, 0.0, 0.0, 0.005, 1.985, -1.985, 0.0])
    torch.testing.assert_close(model[1].weight.detach(), expected)
    assert int((model[1].weight == 0).sum()) == 3


def test_rescaling_keeps_outputs_and_undoes():
    model = secateur.models.create_model("vgg8", in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    graph = secateur.trace(model, x)
    ref, state = model(x), copy.deepcopy(model.state_dict())
    done = rescale(model, graph, 7.0, x)
    assert len(done) == 8                                          # every conv-BN-ReLU group
    assert torch.allclose(model.features[1].weight, 7 * state["features.1.weight"])
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    rescale(model, graph, 1 / 7.0, x, groups=done)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], msg=k)


def test_rescaling_refuses_non_homogeneous_activations():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.SiLU(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(2, 1, 8, 8)
    state = copy.deepcopy(model.state_dict())
    assert rescale(model, secateur.trace(model, x), 3.0, x) == []
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_cost_weighted_penalties_follow_macs():
    model = _exact_net()
    p = penalties(secateur.trace(model, X), model, 1.0, cost_weighted=True)
    # MACs per channel: conv 3x3 over 1 input = 9 per position; conv 1x1 over 12 inputs = 12
    assert p["1"] / p["4"] == pytest.approx(9 / 12)
    assert np.mean(list(p.values())) == pytest.approx(1.0)


def test_threshold_target_removes_exactly_the_zeros():
    model = _exact_net().eval()
    with torch.no_grad():
        model[1].weight[[0, 3, 5]] = 0
        model[4].weight[:] = 0                                     # all zero: min_channels keeps 2
    graph = secateur.trace(model, X)
    plan = secateur.plan_pruning(model, graph, secateur.criteria.BNScale(),
                                 Target(threshold=0.0, normalize=False, min_channels=2))
    small = secateur.apply(copy.deepcopy(model), graph, plan)
    assert (small[0].out_channels, small[3].out_channels) == (9, 2)
    with pytest.raises(ValueError, match="exactly one of"):
        Target(threshold=0.0, amount=0.5)


def test_slimming_multi_pass_end_to_end():
    train, test = _loaders()
    torch.manual_seed(0)
    model = tiny_net()
    before = copy.deepcopy(model.state_dict())
    config = Slimming(sparsity=1e-3, amount=0.4, sparsity_epochs=3, finetune_epochs=2, passes=2,
                      optim=Optim(lr=0.1))
    result = slimming(model, train, X, config, eval_loader=test, progress=False)
    stages = [r["stage"] for r in result.records]
    assert stages == ["baseline"] + ["sparse", "pruned", "recalibrated", "finetuned"] * 2
    params = [r["params"] for r in result.records if r["stage"] == "finetuned"]
    assert params[1] < params[0] < result.records[0]["params"]
    widths = [m.out_channels for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(widths) == 9              # one global threshold: 24 channels -> 24 - 9 = 15 -> 15 - 6 = 9
    assert next(r for r in result.records if r["stage"] == "finetuned")["acc"] > 0.8  # pass 0 recovers
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # caller's model untouched


def test_ista_removes_zeros_without_changing_the_function():
    train, test = _loaders()
    model = _exact_net()
    config = ISTA(rho=1.0, alpha=0.5, sparsity_epochs=3, finetune_epochs=1, optim=Optim(lr=0.05))
    result = ista(model, train, X, config, eval_loader=test, progress=False)
    sparse, pruned = result.last("sparse"), result.last("pruned")
    assert sparse["zero_gammas"] >= 4
    assert pruned["params"] < sparse["params"]
    assert pruned["max_rel_diff"] < 1e-5
    assert pruned["acc"] == pytest.approx(sparse["acc"])


@pytest.mark.parametrize("make, match", [
    (lambda: Slimming(sparsity=-1e-4), r"sparsity=-0.0001 \(lambda\) must be >= 0"),
    (lambda: Slimming(amount=1.0), "amount=1.0"),
    (lambda: Slimming(passes=0), "passes=0"),
    (lambda: Slimming(max_amount=0), "max_amount=0"),
    (lambda: ISTA(rho=-1), "rho=-1"),
    (lambda: ISTA(alpha=0), "alpha=0"),
    (lambda: ISTA(sparsity_epochs=-2), "sparsity_epochs=-2"),
])
def test_bad_config_is_one_line(make, match):
    with pytest.raises(ValueError, match=match) as e:
        make()
    assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", secateur.models.list_models())
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)], ids=["fmnist", "cifar"])
def test_papers_models_train_and_slim(name, shape):
    """Every CIFAR-style model takes a training step and a global |gamma| cut of 40% of its channels
    (residual stages, DenseNet concats and pre-activation BNs are groups), then trains on."""
    channels, size = shape
    torch.manual_seed(0)
    model = secateur.models.create_model(name, in_channels=channels)
    data = torch.utils.data.TensorDataset(torch.randn(8, channels, size, size), torch.randint(10, (8,)))
    loader = DataLoader(data, batch_size=4)
    fit(model, loader, epochs=1, optim=Optim(lr=0.01), progress=False)
    x = torch.randn(2, channels, size, size)
    small = prune_by(model, x, Target(amount=0.4, global_ranking=True, normalize=False))
    assert count_params(small) < count_params(model)
    history = fit(small, loader, epochs=1, optim=Optim(lr=0.01), progress=False)
    assert np.isfinite(history[0]["loss"])
    assert small.eval()(x).shape == (2, 10)


def test_slimming_compiled_trains_the_same_gammas(monkeypatch):
    """compile= reaches the training stages, and the callbacks still act on the compiled model's
    parameters: the sparse gammas match an uncompiled run."""
    compiled_calls, real_compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled_calls.append(m) or real_compile(m, **kw))
    train, _ = _loaders()
    cfg = Slimming(sparsity=1e-2, amount=0.5, sparsity_epochs=1, finetune_epochs=0, optim=Optim(lr=0.05))
    runs = []
    for c in (False, True):
        torch.manual_seed(0)
        runs.append(slimming(tiny_net(), train, X, cfg, progress=False, compile=c))
    eager, compiled = (torch.tensor(r.last("sparse")["gammas"]) for r in runs)
    assert len(compiled_calls) == 1               # the sparsity stage (no fine-tune epochs asked)
    assert (eager - 1.0).abs().max() > 1e-2     # gammas start at 1: the sparsity epoch moved them
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_slimming_max_amount_caps_every_layer():
    """60% of all channels under one threshold, but no layer may lose more than half: 8 -> 4 and 16 -> 8."""
    train, _ = _loaders()
    torch.manual_seed(0)
    cfg = Slimming(sparsity=1e-2, amount=0.6, max_amount=0.5, sparsity_epochs=1, finetune_epochs=0,
                   optim=Optim(lr=0.05))
    result = slimming(tiny_net(), train, X, cfg, progress=False)
    assert [m.out_channels for m in result.model.modules() if isinstance(m, nn.Conv2d)] == [4, 8]

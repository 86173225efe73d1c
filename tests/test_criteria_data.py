"""Data-driven criteria (APoZ, Taylor, Taylor2019): known answers, brute-force references, the plan
they plug into, the caller's model left untouched, and one-line errors for bad calibration data."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import secateur
from secateur.criteria import APoZ, CalibrationError, Taylor, Taylor2019
from zoo import ZOO, ZooEntry, calibrate, zoo_params


class _Net(nn.Module):
    """conv(3->4) -> BN -> act -> conv(4->6) -> BN -> act -> pool -> Linear(6->3)."""

    def __init__(self, act=None):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.a1, self.a2 = (act or (lambda: nn.ReLU(inplace=True)))(), (act or nn.ReLU)()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = self.a1(self.b1(self.c1(x)))
        y = self.a2(self.b2(self.c2(y)))
        return self.fc(y.mean((2, 3)))


X = torch.randn(2, 3, 8, 8)


def _loader(shape=(4, 3, 8, 8), batches=3, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g))
            for _ in range(batches)]


def _bound(crit, model, loader):
    return crit.bind(model, secateur.trace(model, X), loader)


# ---------------------------------------------------------------- known answers


def test_apoz_scores_a_dead_channel_zero_and_prunes_it():
    model = _Net().eval()
    with torch.no_grad():
        model.b1.bias[2] = -100.0        # channel 2 is negative before the ReLU on every input
    loader = _loader()
    b = _bound(APoZ(), model, loader)
    zs = []
    for x, _ in loader:
        h = model.b1.register_forward_hook(lambda m, a, o: zs.append(o.detach().clone()))
        with torch.no_grad():
            model(x)
        h.remove()
    z = torch.cat(zs)
    expect = 1 - (z <= 0).double().mean((0, 2, 3))
    assert torch.allclose(b.scores["b1"], expect, atol=0, rtol=1e-12)
    assert b.scores["b1"][2] == 0 and (expect[[0, 1, 3]] > 0).all()
    group = secateur.trace(model, X).prunable[0]
    assert torch.allclose(torch.from_numpy(b(group, model)), expect, rtol=1e-12)
    small = secateur.prune(model, X, APoZ(), amount=0.25, data=loader)
    assert small.c1.out_channels == 3 and small.c2.in_channels == 3
    assert torch.equal(small.b1.bias.detach(), model.b1.bias.detach()[[0, 1, 3]])


def test_apoz_without_batchnorm_records_the_conv():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 3)
            with torch.no_grad():
                self.c1.bias[1] = -100.0

        def forward(self, x):
            return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))

    model = Plain().eval()
    b = _bound(APoZ(), model, _loader())
    assert set(b.scores) == {"c1", "c2"} and b.scores["c1"][1] == 0
    small = secateur.prune(model, X, APoZ(), amount=0.25, data=_loader())
    assert small.c1.out_channels == 3
    assert torch.equal(small.c1.bias.detach(), model.c1.bias.detach()[[0, 2, 3]])


def _dead_model(act=None):
    model = _Net(act).eval()
    with torch.no_grad():
        model.c2.weight[:, 1] = 0.0      # channel 1 of the first block never reaches the loss
    return model


@pytest.mark.parametrize("crit", [Taylor(), Taylor2019()], ids=["Taylor", "Taylor2019"])
def test_taylor_scores_an_unused_channel_zero_and_prunes_it_first(crit):
    model, loader = _dead_model(), _loader()
    site = "b1" if isinstance(crit, Taylor) else "c1"
    s = _bound(crit, model, loader).scores[site]
    assert s[1] == 0 and (s[[0, 2, 3]] > 1e-12).all()
    small = secateur.prune(model, X, crit, amount=0.25, data=loader)
    assert small.c1.out_channels == 3
    assert torch.equal(small.c1.weight.detach(), model.c1.weight.detach()[[0, 2, 3]])


@pytest.mark.parametrize("act", [None, lambda: nn.Hardswish(inplace=True)],
                         ids=["relu_inplace", "hardswish_inplace"])
def test_taylor_matches_autograd_and_is_normalised_per_layer(act):
    model, loader = _Net(act).eval(), _loader()
    b = _bound(Taylor(), model, loader)
    assert set(b.scores) == {"b1", "b2"}
    for name in ("b1", "b2"):
        module, per_batch = model.get_submodule(name), []
        for x, y in loader:
            seen = {}

            def hook(m, a, o):
                seen["z"] = o.detach().clone()
                o.register_hook(lambda g: seen.update(g=g))
            h = module.register_forward_hook(hook)
            F.cross_entropy(model(x), y).backward(inputs=list(model.parameters()))
            h.remove()
            per_batch.append((seen["z"].double() * seen["g"].double()).mean((0, 2, 3)).abs())
        theta = torch.stack(per_batch).mean(0)
        assert torch.allclose(b.scores[name], theta / theta.norm(), rtol=1e-6, atol=1e-12)
        assert abs(b.scores[name].norm().item() - 1) < 1e-12
    model.zero_grad(set_to_none=True)


def test_taylor2019_matches_autograd_with_bias_and_frozen_weights():
    model, loader = _Net().eval(), _loader()
    model.c1.weight.requires_grad_(False)            # a frozen layer is still scored, and stays frozen
    b = _bound(Taylor2019(), model, loader)
    assert set(b.scores) == {"c1", "c2"} and not model.c1.weight.requires_grad
    ref = torch.zeros(4, dtype=torch.float64)
    model.c1.weight.requires_grad_(True)
    for x, y in loader:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        w, bias = model.c1.weight, model.c1.bias
        ref += ((w.double() * w.grad.double()) ** 2).sum((1, 2, 3))
        ref += (bias.double() * bias.grad.double()) ** 2
    assert torch.allclose(b.scores["c1"], ref / len(loader), rtol=1e-9, atol=0)


def test_data_criteria_must_be_bound():
    with pytest.raises(TypeError, match="data=loader"):
        Taylor()(secateur.trace(_Net(), X).prunable[0], _Net())


# ---------------------------------------------------------------- plugs into the plan


_FAST = [e for e in ZOO if e.name in {"secateur/vgg8", "secateur/resnet20", "resnet18", "mobilenet_v2"}]


@pytest.mark.parametrize("crit", [APoZ(), Taylor(), Taylor2019()], ids=["APoZ", "Taylor", "Taylor2019"])
@pytest.mark.parametrize("entry", zoo_params(_FAST))
def test_prune_with_data_leaves_the_caller_model_as_it_was(entry: ZooEntry, crit):
    x = entry.example_input()
    model = calibrate(entry.build(), x).train()
    first = next(model.parameters())
    first.grad = torch.full_like(first, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = _loader((3, *entry.input_shape[1:]), batches=2, classes=10)
    data = copy.deepcopy(loader)
    small = secateur.prune(model, x, crit, amount=0.3, data=loader)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(first.grad, torch.full_like(first, 0.5))
    assert all(p.grad is None for p in list(model.parameters())[1:])
    assert all(torch.equal(a, c) and not a.requires_grad for (a, _), (c, _) in zip(loader, data))
    n0, n1 = (sum(p.numel() for p in m.parameters()) for m in (model, small))
    assert n1 < 0.85 * n0
    with torch.no_grad():
        assert small.eval()(x).shape == (entry.input_shape[0], 10)


# ---------------------------------------------------------------- errors


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("crit", [APoZ(), Taylor(), Taylor2019()], ids=["APoZ", "Taylor", "Taylor2019"])
def test_errors_are_one_line(crit):
    model = _Net().eval()
    with pytest.raises(ValueError, match="data=") as e:
        secateur.prune(model, X, crit, amount=0.5)
    _one_line(e)
    with pytest.raises(CalibrationError, match="no batches") as e:
        secateur.prune(model, X, crit, amount=0.5, data=[])
    _one_line(e)
    with pytest.raises(CalibrationError, match=r"\(4, 3, 9, 9\)") as e:
        secateur.prune(model, X, crit, amount=0.5, data=_loader((4, 3, 9, 9)))
    assert "(N, 3, 8, 8)" in _one_line(e)


@pytest.mark.parametrize("crit", [Taylor(), Taylor2019()], ids=["Taylor", "Taylor2019"])
def test_gradient_criteria_need_labels(crit):
    model = _Net().eval()
    with pytest.raises(CalibrationError, match="labels") as e:
        secateur.prune(model, X, crit, amount=0.5, data=[x for x, _ in _loader()])
    _one_line(e)
    # APoZ needs no labels
    small = secateur.prune(model, X, APoZ(), amount=0.5, data=[x for x, _ in _loader()])
    assert small.c1.out_channels == 2

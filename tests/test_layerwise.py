"""ThiNet and LASSO channel selection: known answers on tiny layers, the greedy's equivalence with
the naive loop, the layer-by-layer methods on real model families, and their errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import secateur
from secateur.criteria import LASSO, CalibrationError, ThiNet
from secateur.criteria.lasso import select
from secateur.criteria.thinet import greedy_order, naive_greedy, scales
from secateur.methods import ChannelPruning, channel_pruning, gap_head, thinet
from secateur.methods import ThiNet as ThiNetMethod
from secateur.methods.layerwise import chosen_groups
from zoo import ZOO, calibrate


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class Tiny(nn.Module):
    """conv1 (4 filters) -> ReLU -> conv2 -> GAP -> Linear; conv1's filter 2 is zero, filter 3 = filter 0."""

    def __init__(self, tie_consumer: bool):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():
            self.conv1.weight[2] = 0
            self.conv1.weight[1] *= 5          # channel 1 carries the most energy: never the one to go
            self.conv1.weight[3] = self.conv1.weight[0]
            if tie_consumer:                   # channel 3's outgoing weights equal channel 0's
                self.conv2.weight[:, 3] = self.conv2.weight[:, 0]

    def forward(self, x):
        return self.fc(self.pool(self.conv2(self.relu(self.conv1(x)))).flatten(1))


def loader(n: int = 4, shape=(2, 2, 8, 8), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g), torch.randint(0, 3, (shape[0],), generator=g)) for _ in range(n)]


X = torch.randn(1, 2, 8, 8)


def test_greedy_equals_naive_loop():
    x = torch.randn(300, 24, generator=torch.Generator().manual_seed(1))
    x[:, 7] = 0
    order = greedy_order(x.double().T @ x.double())
    assert sorted(order.tolist()) == list(range(24))
    np.testing.assert_array_equal(order[:12], naive_greedy(x, 12))
    assert order[0] == 7                      # the zero channel goes first


def test_least_squares_scales_recover_a_duplicate():
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(2)).double()
    x[:, 3] = x[:, 0]                         # y = 2 x0 + x1 + x2 once x3 is gone
    w = scales(x.T @ x, np.array([0, 1, 2]))
    torch.testing.assert_close(w, torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_thinet_removes_zero_channel_and_rescales_exactly():
    model = Tiny(tie_consumer=True).eval()
    res = thinet(model, loader(), X, ThiNetMethod(amount=0.5, layers=("conv1",)))
    small = res.model
    assert small.conv1.out_channels == 2
    kept = [i for i in range(4) if any(torch.equal(w, model.conv1.weight[i]) for w in small.conv1.weight)]
    assert 1 in kept and 2 not in kept        # the zero filter went, and one of the twins 0 and 3
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        assert rel(small.conv2(small.relu(small.conv1(x))), model.conv2(model.relu(model.conv1(x)))) < 1e-5
        assert rel(small(x), model(x)) < 1e-5
    assert res.records[0]["stage"] == "baseline" and res.records[-1]["stage"] == "pruned"


def test_lasso_selects_zero_and_duplicate_and_reconstructs_exactly():
    model = Tiny(tie_consumer=False).eval()
    res = channel_pruning(model, loader(), X, ChannelPruning(amount=0.5, layers=("conv1",)))
    small = res.model
    assert small.conv1.out_channels == 2
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        assert rel(small.conv2(small.relu(small.conv1(x))), model.conv2(model.relu(model.conv1(x)))) < 1e-5


def test_lasso_path_keeps_exactly_the_asked_count():
    z = torch.randn(400, 6, generator=torch.Generator().manual_seed(3)).double()
    y = z[:, 0] * 3 + z[:, 4] * 2 + 0.01 * z[:, 1]
    keep = select(z.T @ z, z.T @ y, 400, 2)
    np.testing.assert_array_equal(keep, [0, 4])
    assert len(select(z.T @ z, z.T @ y, 400, 5)) == 5


@pytest.mark.parametrize("crit", [ThiNet(), LASSO()], ids=["thinet", "lasso"])
def test_criteria_remove_the_zero_channel_through_prune(crit):
    model = Tiny(tie_consumer=False).eval()
    small = secateur.prune(model, X, crit, amount=0.25, data=loader(), ignore=["conv2"])
    assert small.conv1.out_channels == 3
    assert all(small.conv1.weight[i].abs().sum() > 0 for i in range(3))


ENTRIES = {e.name: e for e in ZOO}


@pytest.mark.parametrize("name,crit", [("secateur/vgg8", ThiNet()), ("secateur/vgg8", LASSO()),
                                       ("secateur/resnet20", ThiNet()), ("secateur/resnet20", LASSO()),
                                       ("resnet18", ThiNet()), ("mobilenet_v2", LASSO())],
                         ids=["vgg8-thinet", "vgg8-lasso", "resnet20-thinet", "resnet20-lasso", "resnet18-thinet",
                              "mobilenet_v2-lasso"])
def test_criteria_plug_into_prune_on_zoo(name, crit):
    entry = ENTRIES[name]
    x = entry.example_input()
    model = calibrate(entry.build(), x).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = loader(2, tuple(x.shape), seed=4)
    small = secateur.prune(model, x, crit, amount=0.3, data=data)
    assert secateur.measure(small, x, latency=False).params < secateur.measure(model, x, latency=False).params
    assert small(x).shape == model(x).shape
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_default_layers_follow_the_papers_rules():
    r20 = secateur.models.create_model("resnet20")
    graph = secateur.trace(r20, torch.zeros(1, 3, 32, 32))
    names = list(chosen_groups(r20, graph, ThiNetMethod(amount=0.5)))
    assert len(names) == 9 and all(n.endswith(".conv1") for n in names)     # one per basic block
    import torchvision
    r50 = torchvision.models.resnet50(weights=None)
    graph = secateur.trace(r50, torch.zeros(1, 3, 64, 64))
    names = list(chosen_groups(r50, graph, ThiNetMethod(amount=0.5)))
    blocks = [n for n in names if n.startswith("layer")]                      # besides the stem conv1:
    assert len(blocks) == 32 and {n.rsplit(".", 1)[1] for n in blocks} == {"conv1", "conv2"}  # bottleneck rule
    vgg = secateur.models.create_model("vgg16")
    graph = secateur.trace(vgg, torch.zeros(1, 3, 32, 32))
    assert len(chosen_groups(vgg, graph, ThiNetMethod(amount=0.5, max_layers=10))) == 10


def test_methods_on_resnet20_meet_a_mac_target_and_leave_the_caller_alone():
    entry = ENTRIES["secateur/resnet20"]
    x = entry.example_input()
    model = calibrate(entry.build(), x).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = loader(2, tuple(x.shape), seed=5)
    for fn, cfg in [(thinet, ThiNetMethod(macs=0.6)), (channel_pruning, ChannelPruning(macs=0.6))]:
        res = fn(model, data, x, cfg)
        assert res.last("pruned")["macs"] <= 0.6 * res.records[0]["macs"] * 1.01
        assert res.model(x).shape == (x.shape[0], 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_thinet_gap_replaces_a_vgg_head():
    import torchvision
    vgg = torchvision.models.vgg11(weights=None, num_classes=10)
    model = gap_head(vgg)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="VGG-style"):
        gap_head(Tiny(False))


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_errors_are_one_line():
    model = Tiny(False).eval()
    cfg = ChannelPruning(amount=0.5, layers=("conv1",))
    with pytest.raises(CalibrationError) as e:
        channel_pruning(model, [], X, cfg)
    assert "no batches" in one_line(e)
    with pytest.raises(CalibrationError) as e:
        channel_pruning(model, loader(1, (2, 2, 9, 9)), X, cfg)
    assert "(2, 2, 9, 9)" in one_line(e)
    with pytest.raises(CalibrationError) as e:      # 2 images x 64 locations offer 128 samples
        channel_pruning(model, loader(1), X, ChannelPruning(amount=0.5, layers=("conv1",), samples=1000))
    assert "samples=1000" in one_line(e) and "conv2" in one_line(e)
    with pytest.raises(ValueError) as e:
        thinet(model, loader(), X, ThiNetMethod(amount=0.5, layers=("fc",)))
    assert "fc" in one_line(e)
    with pytest.raises(ValueError) as e:
        ThiNetMethod(amount=0.5, macs=0.5)
    with pytest.raises(ValueError) as e:
        thinet(model, loader(), X, ThiNetMethod(amount=0.5, finetune_epochs=1))
    assert "train_loader" in one_line(e)


def test_a_group_read_by_a_depthwise_conv_is_refused_by_name():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                        nn.ReLU(), nn.Conv2d(4, 3, 1))
    with pytest.raises(ValueError) as e:
        thinet(net, loader(), X, ThiNetMethod(amount=0.5, layers=("0",)))
    msg = one_line(e)
    assert "dense" in msg or "does not alone" in msg


@pytest.mark.parametrize("conv", [nn.Conv2d(5, 3, 3, padding=1), nn.Conv2d(5, 3, 3, stride=2, padding=2, dilation=2),
                                  nn.Conv2d(5, 3, (3, 1), padding=(1, 0))], ids=["3x3", "strided-dilated", "3x1"])
def test_sampled_windows_equal_unfold(conv):
    from secateur.layers import handler_for
    x = torch.randn(2, 5, 9, 8, generator=torch.Generator().manual_seed(6))
    ho, wo = conv(x).shape[2:]
    k = conv.kernel_size[0] * conv.kernel_size[1]
    cols = torch.nn.functional.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                                      stride=conv.stride).reshape(2, 5, k, ho * wo)
    img, h, w, pos = torch.tensor([0, 1, 1]), torch.tensor([0, ho - 1, 2]), torch.tensor([wo - 1, 0, 3]), torch.tensor([0, 2, 4])
    expected = torch.stack([cols[i][pos, :, hh * wo + ww] for i, hh, ww in zip(img, h, w)])
    got = handler_for(conv).windows(conv, x, pos, img, h * wo + w, (2, conv.out_channels, ho, wo))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_latency_target_is_planned_on_the_table_and_measured_after(monkeypatch) -> None:
    from test_runtimes import Staircase, _vgg
    import secateur.runtimes as rt
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Staircase())
    model, x = _vgg(), torch.randn(2, 3, 16, 16)
    result = thinet(model, loader(2, (2, 3, 16, 16)), x, ThiNetMethod(latency=0.5, runtime="staircase"),
                    progress=False)
    pruned = next(r for r in result.records if r.stage == "pruned")
    # one rate over the layers, predicted at most 0.5; the staircase reads input widths at the next
    # multiple of 8, so the prediction is an upper bound of the measurement
    assert 0.4 <= pruned["latency_predicted"] <= 0.5
    assert pruned["latency_measured"] <= pruned["latency_predicted"] + 1e-9
    with pytest.raises(ValueError, match="exactly one of amount="):
        ThiNetMethod(amount=0.5, latency=0.5)

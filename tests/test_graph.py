"""Known answers for the channel groups: which layers are cut together, and what is frozen and why."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import secateur
from secateur.graph import Role


def _group_of(graph, module: str, role: Role):
    found = [g for g in graph.groups for m in g.members if m.site.module == module and m.site.role is role]
    assert len(found) == 1, f"{module}[{role.value}] is in {len(found)} groups"
    return found[0]


def _sites(group) -> set[str]:
    return {str(m.site) for m in group.members}


def _exact_after_cut(model, x, group, units) -> float:
    graph = secateur.trace(model, x)
    group = graph.groups[group.index]
    silenced = copy.deepcopy(model).eval()
    secateur.silence(silenced, group, units)
    pruned = secateur.apply(copy.deepcopy(silenced), graph,
                            secateur.Plan({group.index: np.setdiff1d(np.arange(group.size), units)}))
    with torch.no_grad():
        a, b = silenced(x), pruned(x)
    return ((a - b).norm() / a.norm()).item()


def test_residual_stage_is_one_group():
    g = secateur.trace(torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 64, 64))
    stage = _group_of(g, "conv1", Role.OUT)
    assert {"conv1[out]", "layer1.0.conv2[out]", "layer1.1.conv2[out]", "bn1", "layer1.0.bn2",
            "layer1.1.bn2", "layer1.0.conv1[in]", "layer1.1.conv1[in]", "layer2.0.conv1[in]",
            "layer2.0.downsample.0[in]"} == _sites(stage)
    inner = _group_of(g, "layer1.0.conv1", Role.OUT)
    assert _sites(inner) == {"layer1.0.conv1[out]", "layer1.0.bn1", "layer1.0.conv2[in]"}
    assert _group_of(g, "fc", Role.OUT).frozen == "model output"
    assert _group_of(g, "conv1", Role.IN).frozen.startswith("model input")


def test_concat_maps_each_consumer_slice_back_to_its_producer():
    model = secateur.models.create_model("densenet40").eval()
    g = secateur.trace(model, torch.randn(1, 3, 32, 32))
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    first_layer = names[1]   # the first dense layer's conv: read by every later conv of its block
    group = _group_of(g, first_layer, Role.OUT)
    readers = [m for m in group.members if m.site.role is Role.IN]
    assert len(readers) >= 11 and group.size == 12 and group.prunable
    # in each reader, the 12 channels sit at the same offset of the concatenated input
    assert len({tuple(m.positions) for m in readers}) == 1


def test_depthwise_conv_follows_its_input():
    g = secateur.trace(torchvision.models.mobilenet_v2(num_classes=10).eval(), torch.randn(1, 3, 64, 64))
    group = _group_of(g, "features.2.conv.0.0", Role.OUT)   # expansion 1x1
    assert {"features.2.conv.1.0[out]", "features.2.conv.1.0[in]", "features.2.conv.2[in]"} <= _sites(group)


def test_grouped_conv_units_span_every_group():
    g = secateur.trace(torchvision.models.resnext50_32x4d(num_classes=10).eval(), torch.randn(1, 3, 64, 64))
    group = _group_of(g, "layer1.0.conv1", Role.OUT)    # feeds conv2: 128 channels in 32 groups of 4
    assert group.size == 4 and group.width == 32 and group.prunable
    model = torchvision.models.resnext50_32x4d(num_classes=10).eval()
    assert _exact_after_cut(model, torch.randn(2, 3, 64, 64), group, np.array([1, 3])) < 1e-5


def test_flatten_into_linear_maps_a_channel_to_its_features():
    model = torchvision.models.vgg11_bn(num_classes=10).eval()
    g = secateur.trace(model, torch.randn(1, 3, 64, 64))
    group = _group_of(g, "features.25", Role.OUT)   # last conv -> pool -> avgpool 7x7 -> flatten -> Linear
    linear = next(m for m in group.members if m.site.module == "classifier.0")
    assert group.size == 512 and len(linear.positions) == 512 * 49
    assert np.array_equal(linear.unit[:49], np.zeros(49)) and linear.unit[49] == 1
    mlp = _group_of(g, "classifier.0", Role.OUT)      # Linear -> ReLU -> Dropout -> Linear
    assert _sites(mlp) == {"classifier.0[out]", "classifier.3[in]"} and mlp.prunable


def test_squeeze_excitation_gate_is_tied_to_the_channels_it_scales():
    g = secateur.trace(torchvision.models.efficientnet_b0(num_classes=10).eval(), torch.randn(1, 3, 64, 64))
    group = _group_of(g, "features.2.0.block.0.0", Role.OUT)   # expansion conv of an MBConv with SE
    sites = _sites(group)
    assert "features.2.0.block.2.fc2[out]" in sites and "features.2.0.block.2.fc1[in]" in sites
    squeeze = _group_of(g, "features.2.0.block.2.fc1", Role.OUT)
    assert squeeze.prunable and "features.2.0.block.2.fc2[in]" in _sites(squeeze)


def test_layer_scale_parameter_and_layernorm_are_sliced():
    g = secateur.trace(torchvision.models.convnext_tiny(num_classes=10).eval(), torch.randn(1, 3, 64, 64))
    stream = _group_of(g, "features.0.0", Role.OUT)
    assert "features.1.0.layer_scale[dim 0]" in _sites(stream)
    assert not stream.exact    # LayerNorm over channels: removing one changes the statistics


def test_channel_shuffle_ties_the_shuffled_halves():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    g = secateur.trace(model, x)
    stage = _group_of(g, "stage2.0.branch1.2", Role.OUT)
    assert stage.prunable and stage.width >= 2
    assert _exact_after_cut(model, x, stage, np.array([0])) < 1e-5


class _Ops(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)
        self.op = op

    def forward(self, x):
        return self.head(self.op(self.conv(x)))


@pytest.mark.parametrize("op, reason", [
    (lambda y: torch.fft.fft2(y).real, "unsupported op"),
    (lambda y: y.view(y.shape[0], 8, 16, 4).view(y.shape[0], 8, 8, 8), "fixed size"),
    (lambda y: torch.cat([y[:, :4] * 2, y[:, 4:]], 1), "picked by position"),
    (lambda y: y - y.mean(1, keepdim=True), "reduction over channels"),
    (lambda y: F.pad(y, (0, 0, 0, 0, 1, 1))[:, 1:-1], "padding of the channel dim"),
])
def test_what_the_engine_does_not_understand_is_frozen_and_named(op, reason):
    g = secateur.trace(_Ops(op).eval(), torch.randn(1, 3, 8, 8))
    conv = _group_of(g, "conv", Role.OUT)
    assert conv.frozen and reason in conv.frozen, conv.frozen
    assert not g.prunable or all(p.index != conv.index for p in g.prunable)


class _SameConv(nn.Conv2d):
    """TF-style 'SAME' padding computed from the input size: fx cannot trace this, so it must stay a leaf."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        pad_h = max((-(-ih // self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - ih, 0)
        pad_w = max((-(-iw // self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _Shared(nn.Module):
    """A conv subclass with its own forward, and one conv called twice with the same weights."""

    def __init__(self):
        super().__init__()
        self.stem = _SameConv(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.twice = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.twice(y)) + torch.relu(self.twice(y * 0.5))
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_conv_subclass_stays_a_leaf_and_keeps_its_class_and_shared_modules_are_cut_once():
    torch.manual_seed(0)
    model, x = _Shared().eval(), torch.randn(2, 3, 15, 15)
    g = secateur.trace(model, x)
    stem = _group_of(g, "stem", Role.OUT)
    assert _sites(stem) == {"stem[out]", "bn", "twice[in]"}
    small = secateur.prune(model, x, secateur.criteria.L1(), amount=0.5)
    assert type(small.stem) is _SameConv and small.stem.out_channels == 4 and small.twice.in_channels == 4
    assert _exact_after_cut(model, x, stem, np.array([1, 2, 5])) < 1e-5


def test_ignore_keeps_outputs_whole_and_opaque_modules_freeze_their_channels():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    small = secateur.prune(model, x, secateur.criteria.L1(), amount=0.5, ignore=[model.layer1[0].conv1])
    assert small.layer1[0].conv1.out_channels == 64 and small.layer1[1].conv1.out_channels == 32
    g = secateur.trace(model, x, ignore=["layer4"])
    assert "ignored" in _group_of(g, "layer3.1.conv2", Role.OUT).frozen


class _ConstantChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.point = nn.Conv2d(8, 6, 1, bias=False)    # 1x1 consumer without bias: folds into bn2
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.relu(self.bn2(self.point(y)))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


@pytest.mark.parametrize("fold", [True, False])
def test_constant_channels_are_folded_into_the_consumer(fold):
    torch.manual_seed(0)
    model, x = _ConstantChannels().eval(), torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        model.bn.weight[[1, 4]] = 0          # gamma = 0, beta != 0: these channels output relu(beta)
        model.bn.bias[[1, 4]] = torch.tensor([0.7, 1.3])
        model.bn2.weight[[0, 5]] = 0
        model.bn2.bias[[0, 5]] = torch.tensor([0.4, 0.9])
        model.bn2.running_mean.uniform_(-0.5, 0.5)
    g = secateur.trace(model, x)
    plan = secateur.Plan({_group_of(g, "conv", Role.OUT).index: [0, 2, 3, 5, 6, 7],
                          _group_of(g, "point", Role.OUT).index: [1, 2, 3, 4]})
    small = secateur.apply(copy.deepcopy(model), g, plan, fold=fold)
    with torch.no_grad():
        err = ((small(x) - model(x)).norm() / model(x).norm()).item()
    assert small.point.in_channels == 6 and small.fc.in_features == 4
    assert (err < 1e-6) if fold else (err > 1e-2)
    assert small.point.bias is None   # folded into the next BatchNorm's running mean, no new parameter


class _Shuffle(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.shuffle = (lambda y: F.channel_shuffle(y, 2)) if functional else nn.ChannelShuffle(2)

    def forward(self, x):
        return self.b(self.shuffle(self.a(x)))


@pytest.mark.parametrize("functional", [False, True])
def test_channel_shuffle_op_cuts_the_same_position_from_every_group(functional):
    torch.manual_seed(0)
    model, x = _Shuffle(functional).eval(), torch.randn(2, 3, 5, 5)
    group = _group_of(secateur.trace(model, x), "a", Role.OUT)
    assert group.prunable and (group.size, group.width) == (4, 2)
    assert _exact_after_cut(model, x, group, np.array([0])) < 1e-6

"""Tests for ``secateur.models`` and for the test zoo (``tests/zoo.py``)."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from secateur.models import (
    VGG,
    DenseNetCifar,
    PreActResNetCifar,
    ResNetCifar,
    create_model,
    list_models,
)
from zoo import ZOO, ZooEntry, calibrate, zoo_params

MODELS = list_models()


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def test_registry_lists_the_papers_models_sorted() -> None:
    expected = {"vgg8", "vgg16", "vgg19", "resnet20", "resnet32", "resnet56", "resnet110",
                "preresnet164", "densenet40"}  # fmt: skip
    assert set(MODELS) == expected
    assert sorted(MODELS) == MODELS


def test_unknown_name_raises_one_line_value_error() -> None:
    with pytest.raises(ValueError) as info:
        create_model("resnet18_cifar")
    message = str(info.value)
    assert "'resnet18_cifar'" in message
    assert "\n" not in message
    assert all(name in message for name in MODELS)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_on_fashion_mnist_and_cifar_sizes(name: str, in_channels: int) -> None:
    model = create_model(name, num_classes=10, in_channels=in_channels).eval()
    with torch.no_grad():
        for side in (28, 32):
            out = model(_randn(2, in_channels, side, side))
            assert out.shape == (2, 10)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_sets_the_head_width(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(_randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", MODELS)
def test_fx_symbolic_trace_reproduces_the_model(name: str) -> None:
    model = create_model(name).eval()
    traced = fx.symbolic_trace(model)
    x = _randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


# (exact count with 3 input channels and 10 classes, paper count, relative tolerance to the paper)
PARAM_COUNTS = {
    # He et al. 2016 report option-A shortcuts; option B adds 2,752 parameters at every depth.
    "resnet20": (272_474, 0.27e6, 0.02),
    "resnet56": (855_770, 0.85e6, 0.02),
    # Network Slimming, Table 1.
    "preresnet164": (1_703_258, 1.70e6, 0.02),
    "vgg19": (20_035_018, 20.04e6, 0.02),
    # Slimming's code starts with 2 × 12 = 24 channels; its 1.02M (and Huang et al.'s 1.0M) match
    # the original DenseNet's 16-channel stem, which gives 1,019,722. Hence the wider tolerance.
    "densenet40": (1_059_298, 1.02e6, 0.05),
}


@pytest.mark.parametrize("name", PARAM_COUNTS)
def test_param_count_matches_the_paper(name: str) -> None:
    exact, paper, rtol = PARAM_COUNTS[name]
    count = _num_params(create_model(name))
    assert count == exact
    assert abs(count / paper - 1) <= rtol


def test_vgg_rebuilds_from_a_pruned_cfg() -> None:
    cfg = (3, "M", 5, 7)
    model = VGG(cfg, in_channels=1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert model.cfg == cfg
    assert [c.out_channels for c in convs] == [3, 5, 7]
    assert model.classifier.in_features == 7


@pytest.mark.parametrize("cfg", [(), ("M",), (64, "A"), (64, 0), (64, 2.0)])
def test_vgg_rejects_a_malformed_cfg(cfg: tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match="cfg"):
        VGG(cfg)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cls", "depth"),
    [(ResNetCifar, 21), (ResNetCifar, 2), (PreActResNetCifar, 165), (DenseNetCifar, 41)],
)
def test_invalid_depth_raises(cls: type[nn.Module], depth: int) -> None:
    with pytest.raises(ValueError, match=str(depth)):
        cls(depth)


def test_resnet_uses_projection_shortcuts_only_where_the_shape_changes() -> None:
    model = create_model("resnet20")
    projections = [
        n
        for n, m in model.named_modules()
        if n.endswith("shortcut") and not isinstance(m, nn.Identity)
    ]
    assert projections == ["layer2.0.shortcut", "layer3.0.shortcut"]


def test_densenet40_channel_widths() -> None:
    model = create_model("densenet40")
    assert isinstance(model, DenseNetCifar)
    assert model.conv1.out_channels == 24
    assert (model.trans1.conv.in_channels, model.trans2.conv.in_channels) == (168, 312)
    assert model.fc.in_features == 456


# --- the test zoo ------------------------------------------------------------------------------


def test_zoo_names_are_unique_and_cover_the_required_architectures() -> None:
    names = [e.name for e in ZOO]
    assert len(names) == len(set(names))
    torchvision_names = {n for n in names if not n.startswith("secateur/")}
    assert len(torchvision_names) >= 28
    required = {
        "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "vgg16",
        "alexnet", "squeezenet1_1", "densenet121", "mobilenet_v2", "mobilenet_v3_small",
        "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf",
        "regnet_y_400mf", "convnext_tiny", "shufflenet_v2_x1_0", "mnasnet0_5", "googlenet",
        "inception_v3",
    }  # fmt: skip
    assert required <= torchvision_names
    assert {f"secateur/{n}" for n in MODELS} <= set(names)
    assert any(e.input_shape == (2, 1, 28, 28) for e in ZOO)


@pytest.mark.parametrize("entry", zoo_params([e for e in ZOO if e.name.startswith("secateur/")]))
def test_zoo_builds_are_seeded(entry: ZooEntry) -> None:
    first, second = entry.build().state_dict(), entry.build().state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_calibrate_normalises_every_batchnorm_to_its_affine_params() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)
    )
    x = 3.0 + 5.0 * _randn(4, 3, 10, 10)
    calibrate(model, x)
    assert not model.training
    with torch.no_grad():
        for bn_index in (1, 4):
            bn = model[bn_index]
            out = model[: bn_index + 1](x)
            var, mean = torch.var_mean(out, dim=(0, 2, 3), correction=0)
            torch.testing.assert_close(mean, bn.bias, atol=1e-4, rtol=0)
            torch.testing.assert_close(var.sqrt(), bn.weight, atol=1e-3, rtol=1e-3)
            assert ((bn.weight >= 0.5) & (bn.weight <= 1.5)).all()
            assert ((bn.bias >= -0.2) & (bn.bias <= 0.2)).all()


@pytest.mark.parametrize("entry", zoo_params())
def test_zoo_entry_builds_and_calibrates_to_unit_scale(entry: ZooEntry) -> None:
    x = entry.example_input()
    model = calibrate(entry.build(), x)
    with torch.no_grad():
        out = model(x)
    assert not model.training
    assert out.shape == (entry.input_shape[0], 10)
    assert torch.isfinite(out).all()
    assert 1e-2 <= out.abs().max().item() <= 1e3

"""secateur.io: pruned models round-trip through safetensors + JSON; every failure is one clear line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from secateur.io import LoadError, load, load_state_dict_file, save
from secateur.measure import measure


class SameConv(nn.Conv2d):
    """A Conv2d subclass with its own forward (asymmetric padding) that reads ``self.groups``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (0, 2, 0, 2)), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)


class LayerScale(nn.Module):
    """A bare registered Parameter of shape (C, 1, 1), as in ConvNeXt."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Net(nn.Module):
    """conv → BN → PReLU → conv (no bias) → GroupNorm → layer scale → pool → LayerNorm → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act = SameConv(3, 8, 3), nn.BatchNorm2d(8), nn.PReLU(8)
        self.conv2, self.gn = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.GroupNorm(2, 8)
        self.scale, self.ln, self.fc = LayerScale(8), nn.LayerNorm(8), nn.Linear(8, 5)
        for t in (self.bn1.running_mean, self.bn1.running_var, self.gn.weight, self.ln.weight):
            t.data.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale(self.gn(self.conv2(self.act(self.bn1(self.conv1(x))))))
        return self.fc(self.ln(x.mean((2, 3))))


def shrink(module: nn.Module, dims: dict[str, int], keep: list[int], **attrs: object) -> None:
    """Prune by hand: keep ``keep`` along ``dims[name]`` of each tensor, then set width ``attrs``."""
    index = torch.tensor(keep)
    for name, dim in dims.items():
        old = getattr(module, name)
        new = old.detach().index_select(dim, index).clone()
        setattr(module, name, nn.Parameter(new, old.requires_grad) if isinstance(old, nn.Parameter) else new)
    for attr, value in attrs.items():
        setattr(module, attr, value)


BN = {"weight": 0, "bias": 0, "running_mean": 0, "running_var": 0}


def pruned_net() -> Net:
    """Net with conv1 cut to 4 channels and conv2 to 6, plus a bias folded into conv2."""
    torch.manual_seed(0)
    net = Net().eval()
    a, b = [0, 2, 5, 7], [0, 1, 3, 4, 6, 7]
    shrink(net.conv1, {"weight": 0, "bias": 0}, a, out_channels=4)
    shrink(net.bn1, BN, a, num_features=4)
    shrink(net.act, {"weight": 0}, a, num_parameters=4)
    shrink(net.conv2, {"weight": 0}, b, in_channels=4, out_channels=6)
    shrink(net.conv2, {"weight": 1}, a)
    net.conv2.bias = nn.Parameter(torch.randn(6))
    shrink(net.gn, {"weight": 0, "bias": 0}, b, num_channels=6)
    shrink(net.scale, {"gamma": 0}, b)
    shrink(net.ln, {"weight": 0, "bias": 0}, b, normalized_shape=(6,))
    shrink(net.fc, {"weight": 1}, b, in_features=6)
    return net


X = torch.randn(2, 3, 10, 10)


def test_small_net_round_trip(tmp_path: Path) -> None:
    pruned = pruned_net()
    path = save(pruned, tmp_path / "net")
    fresh = Net().eval()
    fresh.bn1.weight.requires_grad_(False)
    assert load(path, model=fresh) is fresh
    torch.testing.assert_close(fresh(X), pruned(X), rtol=0, atol=0)
    assert type(fresh.conv1) is SameConv
    assert (fresh.conv1.out_channels, fresh.conv2.in_channels, fresh.conv2.out_channels) == (4, 4, 6)
    assert (fresh.bn1.num_features, fresh.act.num_parameters, fresh.gn.num_channels) == (4, 4, 6)
    assert (fresh.gn.num_groups, fresh.ln.normalized_shape, fresh.fc.in_features) == (2, (6,), 6)
    assert isinstance(fresh.conv2.bias, nn.Parameter) and fresh.conv2.bias.shape == (6,)
    assert "running_mean" in fresh.bn1._buffers and not fresh.bn1.weight.requires_grad
    assert fresh.scale.gamma.shape == (6, 1, 1) and not fresh.training
    spec = json.loads((path / "pruning.json").read_text())
    assert (spec["format"], spec["version"], spec["torch"]) == ("secateur-pruned", 1, torch.__version__)
    assert spec["modules"]["conv2"]["tensors"] == {"weight": [6, 4, 3, 3], "bias": [6]}
    assert spec["modules"]["conv1"]["attrs"] == {"in_channels": 3, "out_channels": 4, "groups": 1}


def test_resnet18_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pruned = torchvision.models.resnet18().eval()
    block, keep = pruned.layer1[0], list(range(0, 64, 2))
    shrink(block.conv1, {"weight": 0}, keep, out_channels=32)
    shrink(block.bn1, BN, keep, num_features=32)
    shrink(block.conv2, {"weight": 1}, keep, in_channels=32)
    fresh = load(save(pruned, tmp_path / "r18"), model=torchvision.models.resnet18().eval())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(fresh(x), pruned(x), rtol=0, atol=0)
    assert fresh.layer1[0].conv1.weight.shape == (32, 64, 3, 3) and fresh.layer1[0].bn1.num_features == 32


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_tied_weights_stay_tied_and_are_stored_once(tmp_path: Path) -> None:
    pruned = Tied()
    shrink(pruned.a, {"weight": 0}, [0, 1], out_features=2)
    pruned.b.weight = pruned.a.weight = nn.Parameter(pruned.a.weight[:, :2].clone())
    pruned.a.in_features = pruned.b.in_features = pruned.b.out_features = 2
    path = save(pruned, tmp_path / "tied")
    fresh = load(path, model=Tied())
    assert fresh.a.weight is fresh.b.weight and fresh.a.weight.shape == (2, 2)
    torch.testing.assert_close(fresh.a.weight, pruned.a.weight, rtol=0, atol=0)
    assert list(safetensors.torch.load_file(path / "model.safetensors")) == ["a.weight"]


def test_file_size_is_what_measure_reports(tmp_path: Path) -> None:
    pruned = pruned_net()
    path = save(pruned, tmp_path / "net")
    assert (path / "model.safetensors").stat().st_size == measure(pruned, X, latency=False).bytes


def _json_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        spec = json.loads((path / "pruning.json").read_text())
        change(spec)
        (path / "pruning.json").write_text(json.dumps(spec))
    return edit


def _extra_tensor(path: Path) -> None:
    state = safetensors.torch.load_file(str(path / "model.safetensors"))
    safetensors.torch.save_file({**state, "stray.weight": torch.zeros(2)}, str(path / "model.safetensors"))


def _truncate(path: Path) -> None:
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


BREAKAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (how to break the saved directory, file the message names, what it says)
    "pruning.json missing": (lambda p: (p / "pruning.json").unlink(), "pruning.json", "missing"),
    "weights missing": (lambda p: (p / "model.safetensors").unlink(), "model.safetensors", "no such file"),
    "not JSON": (lambda p: (p / "pruning.json").write_text("{oops"), "pruning.json", "not valid JSON"),
    "wrong format": (_json_edit(lambda s: s.update(format="other")), "pruning.json", "expected"),
    "wrong version": (_json_edit(lambda s: s.update(version=2)), "pruning.json", "version 2"),
    "truncated weights": (_truncate, "model.safetensors", "corrupt or truncated"),
    "shape mismatch": (_json_edit(lambda s: (s["modules"]["conv2"]["tensors"].update(weight=[5, 4, 3, 3]),
                                             s["modules"]["conv2"]["attrs"].update(out_channels=5))),
                       "model.safetensors", "shape (6, 4, 3, 3)"),
    "negative width": (_json_edit(lambda s: s["modules"]["conv1"]["attrs"].update(out_channels=-3)),
                       "pruning.json", "out_channels = -3 is not a width"),
    "width against tensors": (_json_edit(lambda s: s["modules"]["conv1"]["attrs"].update(out_channels=3)),
                              "pruning.json", "out_channels = 3 but its tensors give 4"),
    "extra tensor": (_extra_tensor, "model.safetensors", "'stray.weight', which pruning.json does not describe"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_load_errors_are_one_line_and_leave_model_untouched(tmp_path: Path, breakage: str) -> None:
    path = save(pruned_net(), tmp_path / "net")
    corrupt, file, says = BREAKAGES[breakage]
    corrupt(path)
    fresh = Net()
    with pytest.raises(LoadError) as info:
        load(path, model=fresh)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert str(path / file) in message and says in message
    assert fresh.conv1.out_channels == 8 and fresh.conv1.weight.shape == (8, 3, 3, 3)


def test_missing_directory_and_other_architecture(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="no such directory"):
        load(tmp_path / "nowhere", model=Net())
    path = save(pruned_net(), tmp_path / "net")
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(LoadError, match="not the architecture that was saved") as info:
        load(path, model=other)
    assert "\n" not in str(info.value) and other[0].weight.shape == (3, 3)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_no_overwrite_without_flag(tmp_path: Path) -> None:
    path = save(pruned_net(), tmp_path / "net")
    before = _snapshot(path)
    with pytest.raises(FileExistsError, match="pass overwrite=True") as info:
        save(Net(), path)
    assert str(path) in str(info.value) and _snapshot(path) == before
    save(Net(), path, overwrite=True)
    assert load(path, model=Net()).conv1.out_channels == 8
    assert [p.name for p in tmp_path.iterdir()] == ["net"]


def test_crash_mid_save_keeps_previous_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(pruned_net(), tmp_path / "net")
    before = _snapshot(path)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save(Net(), path, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        save(Net(), tmp_path / "new")
    assert _snapshot(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["net"]


def test_load_state_dict_file(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 2), "b": torch.arange(3)}
    safetensors.torch.save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    for name in ("w.safetensors", "ckpt.pth"):
        loaded = load_state_dict_file(tmp_path / name)
        assert loaded.keys() == state.keys()
        torch.testing.assert_close(loaded["w"], state["w"], rtol=0, atol=0)
    torch.save({"w": LayerScale(2)}, tmp_path / "module.pt")
    refused = {"module.pt": "LayerScale object", "w.pkl": "unsupported suffix", "none.pt": "no such file"}
    (tmp_path / "w.pkl").write_bytes(b"")
    for name, says in refused.items():
        with pytest.raises(LoadError, match=says):
            load_state_dict_file(tmp_path / name)


def test_saved_files_get_the_usual_mode(tmp_path: Path) -> None:
    """safetensors' save_file creates 0o600 files; a saved model must be readable as torch.save's
    would be (the umask's default mode), e.g. by other users of a shared server."""
    import os
    umask = os.umask(0o022)
    os.umask(umask)
    path = save(pruned_net(), tmp_path / "net")
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()}
    assert set(modes) == {"model.safetensors", "pruning.json"}
    assert set(modes.values()) == {0o666 & ~umask}, modes

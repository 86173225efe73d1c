"""secateur.io.onnx: export to ONNX, agree with PyTorch in ONNX Runtime, fp16 / int8 files, one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn
from zoo import ZOO, ZooEntry, calibrate

import secateur
from secateur.io import (
    LoadError,
    OnnxError,
    check_onnx,
    export_onnx,
    ort_accuracy,
    ort_latency,
    quantize_int8,
    to_fp16,
)

_ENTRIES = {e.name: e for e in ZOO}


def _pruned_resnet20() -> tuple[nn.Module, torch.Tensor]:
    entry = _ENTRIES["secateur/resnet20"]
    x = entry.example_input()
    model = calibrate(entry.build(), x)
    return calibrate(secateur.prune(model, x, secateur.criteria.L1(), amount=0.5), x), x


def _zoo(name: str) -> tuple[nn.Module, torch.Tensor]:
    entry: ZooEntry = _ENTRIES[name]
    x = entry.example_input()
    return calibrate(entry.build(), x), x


_MODELS = {
    "secateur/vgg8": lambda: _zoo("secateur/vgg8"),
    "secateur/resnet20": lambda: _zoo("secateur/resnet20"),
    "mobilenet_v3_small": lambda: _zoo("mobilenet_v3_small"),
    "resnet20-pruned-0.5": _pruned_resnet20,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, torch.Tensor, Path]]:
    """Each model exported once (the dynamo exporter takes seconds per model), on first request."""
    root = tmp_path_factory.mktemp("onnx")

    class Lazy(dict):
        def __missing__(self, name: str) -> tuple[nn.Module, torch.Tensor, Path]:
            model, x = _MODELS[name]()
            model.train()  # export must run it in eval mode and give the training flag back
            path = export_onnx(model, x, root / f"{name.replace('/', '_')}.onnx")
            assert model.training and all(m.training for m in model.modules())
            model.eval()
            self[name] = (model, x, path)
            return self[name]

    return Lazy()


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", list(_MODELS))
def test_export_agrees_with_pytorch_at_any_batch(name: str, exported: dict) -> None:
    model, x, path = exported[name]
    assert onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    with torch.no_grad():
        y = model(x)  # calibrated BN: activations are O(1) (MobileNetV3's 0.01-std head gives O(0.03) logits)
    assert y.abs().max() > 1e-2 and y.std() > 1e-3
    assert check_onnx(path, model, x) < 1e-4
    other = torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    assert check_onnx(path, model, other, rtol=1e-4) < 1e-4


def test_fp16_half_the_size_and_close(exported: dict, tmp_path: Path) -> None:
    model, x, path = exported["secateur/vgg8"]
    half = to_fp16(path, tmp_path / "vgg8.fp16.onnx")
    ratio = half.stat().st_size / path.stat().st_size
    assert 0.45 < ratio < 0.55, ratio
    proto = onnx.load(half)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    weights = [t for t in proto.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    err = check_onnx(half, model, x, rtol=1e-2)
    assert 1e-6 < err < 1e-2, err  # really float16, and close


def test_int8_dynamic_smaller_and_runnable(exported: dict, tmp_path: Path) -> None:
    model, x, path = exported["secateur/vgg8"]
    q = quantize_int8(path, tmp_path / "vgg8.dyn.onnx")
    assert q.stat().st_size < 0.35 * path.stat().st_size
    assert {"ConvInteger", "MatMulInteger"} & {n.op_type for n in onnx.load(q).graph.node}
    err = check_onnx(q, model, x, rtol=1.0)  # runnable, same shapes, finite, in the right range
    assert 1e-4 < err < 0.5, err
    assert ort_latency(q, x, repeats=2, warmup=1) > 0


def test_int8_static_agrees_with_fp32_top1(exported: dict, tmp_path: Path) -> None:
    model, x, path = exported["secateur/resnet20"]
    gen = torch.Generator().manual_seed(2)
    calib = [(torch.randn(16, *x.shape[1:], generator=gen), torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    test_images = torch.randn(64, *x.shape[1:], generator=gen)
    with torch.no_grad():
        fp32_top1 = model(test_images).argmax(1)
    q = quantize_int8(path, tmp_path / "r20.static.onnx", calibration=calib)
    assert q.stat().st_size < 0.4 * path.stat().st_size
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(q).graph.node}
    assert [p.name for p in tmp_path.iterdir()] == ["r20.static.onnx"]  # no calibration leftovers
    agree = [(test_images[i:i + 16], fp32_top1[i:i + 16]) for i in range(0, 64, 16)]
    assert ort_accuracy(path, agree) == 1.0
    assert ort_accuracy(q, agree) >= 0.8


def test_ort_latency_and_accuracy(exported: dict) -> None:
    _, x, path = exported["secateur/vgg8"]
    ms = ort_latency(path, x[:1], threads=1, repeats=3, warmup=1)
    assert 0 < ms < 1e4 and math.isfinite(ms)
    with pytest.raises(ValueError) as e:
        ort_latency(path, x, repeats=0)
    assert "repeats=0" in _one_line(e)
    with pytest.raises(ValueError) as e:
        ort_accuracy(path, [])
    assert "no batches" in _one_line(e)


def test_refuses_to_overwrite(exported: dict, tmp_path: Path) -> None:
    model, x, path = exported["secateur/vgg8"]
    target = tmp_path / "taken.onnx"
    target.write_bytes(b"keep me")
    for call in (lambda: export_onnx(model, x, target), lambda: to_fp16(path, target),
                 lambda: quantize_int8(path, target)):
        with pytest.raises(FileExistsError) as e:
            call()
        assert str(target) in _one_line(e) and "overwrite=True" in str(e.value)
        assert target.read_bytes() == b"keep me"
    to_fp16(path, target, overwrite=True)
    assert target.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]  # no temporary files left


def test_bad_paths_and_files_one_line(exported: dict, tmp_path: Path) -> None:
    model, x, path = exported["secateur/vgg8"]
    missing, corrupt = tmp_path / "missing.onnx", tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not a protobuf" * 10)
    for bad in (missing, corrupt):
        for call in (lambda: check_onnx(bad, model, x), lambda: ort_latency(bad, x),
                     lambda: ort_accuracy(bad, [(x, torch.zeros(2))]), lambda: to_fp16(bad, tmp_path / "o.onnx"),
                     lambda: quantize_int8(bad, tmp_path / "o.onnx")):
            with pytest.raises(LoadError) as e:
                call()
            assert str(bad) in _one_line(e)
    assert not (tmp_path / "o.onnx").exists()
    other, _, _ = exported["secateur/resnet20"]
    with pytest.raises(OnnxError) as e:  # the file is not this model
        check_onnx(path, other, x)
    assert str(path) in _one_line(e) and "relative error" in str(e.value)


def test_export_errors_leave_no_file(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    target = tmp_path / "m.onnx"
    with pytest.raises(ValueError) as e:
        export_onnx(model, torch.randn(2, 5, 8, 8), target)  # 5 channels for a 3-channel conv
    assert "(2, 5, 8, 8)" in _one_line(e)
    with pytest.raises(ValueError) as e:
        export_onnx(model, torch.randn(2, 3, 8, 8), target, opset=3)
    assert "opset=3" in _one_line(e)
    assert list(tmp_path.iterdir()) == []


class _Branchy(nn.Module):
    """A data-dependent Python branch: torch.export refuses it, TorchScript tracing records one path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if float(y.mean()) > 100:
            y = -y
        return y.flatten(1)


def test_falls_back_to_the_legacy_exporter(tmp_path: Path) -> None:
    model = _Branchy()
    with pytest.warns(RuntimeWarning, match="dynamo exporter failed on _Branchy .*retrying with the legacy"):
        path = export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "b.onnx")
    assert check_onnx(path, model, torch.randn(3, 3, 8, 8)) < 1e-4  # batch still dynamic

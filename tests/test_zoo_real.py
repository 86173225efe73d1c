"""Surgery proven on the models users bring (see zoo_real): every exact group of every model is
silenced and cut, and the outputs (or the detectors' head outputs) must not move; every model prunes
to half its MACs, keeps its output structure, survives save/load, and leaves the caller's model as
it was. YOLO also runs inside Ultralytics after pruning: predict, and its own ONNX export."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from zoo import calibrate
from zoo_real import RealEntry, outputs, real_params, silence_and_cut

import secateur
from secateur.criteria import L1
from secateur.forward import signature


def _close(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    floats = [(a, e) for a, e in zip(actual, expected) if e.is_floating_point() and e.numel()]
    assert floats, "nothing to compare"
    for a, e in floats:
        scale = e.abs().max().item()
        assert scale > 1e-3, f"outputs too small ({scale:.1e}) for a meaningful comparison"
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4 * scale)


def _ready(entry: RealEntry) -> tuple[torch.nn.Module, tuple]:
    x = entry.inputs()
    return calibrate(entry.build(), x[0]), x


@pytest.mark.parametrize("entry", real_params())
def test_every_exact_group_is_cut_exactly(entry: RealEntry) -> None:
    model, x = _ready(entry)
    graph = secateur.trace(model, x)
    exact = [g for g in graph.prunable if g.exact]
    assert len(exact) >= entry.min_groups, f"{len(exact)} exact prunable groups\n{graph}"
    silenced, pruned = silence_and_cut(model, graph)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    _close(outputs(pruned, x, entry.probes), outputs(silenced, x, entry.probes))


@pytest.mark.parametrize("entry", real_params(slow=False))   # Mask R-CNN: Faster R-CNN's path, 45 s more
def test_half_the_macs_keeps_the_outputs_and_the_callers_model(entry: RealEntry, tmp_path) -> None:
    model, x = _ready(entry)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    small = secateur.prune(model, x, L1(), target_macs=0.5)
    with torch.no_grad():
        got, want = signature(small(*x)), signature(model(*x))
    if entry.probes:   # detections: how many boxes survive NMS depends on the values
        got, want = ([(p, len(s)) for p, s in sig] for sig in (got, want))
    assert got == want
    base, cut = secateur.measure(model, x, latency=False), secateur.measure(small, x, latency=False)
    assert 0.3 * base.macs <= cut.macs <= entry.max_macs * base.macs, f"{cut.macs / base.macs:.3f} of the MACs"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in model.modules()] == modes
    secateur.save(small, tmp_path / "small")
    again = secateur.load(tmp_path / "small", model=entry.build()).eval()
    torch.testing.assert_close(outputs(again, x, entry.probes), outputs(small, x, entry.probes),
                               rtol=0, atol=0)


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_pruned_yolo_runs_inside_ultralytics(cfg: str, tmp_path, monkeypatch) -> None:
    ultralytics = pytest.importorskip("ultralytics")
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    yolo = ultralytics.YOLO(cfg, task="detect")
    x = torch.rand(1, 3, 64, 64)
    small = secateur.prune(yolo.model.eval(), x, L1(), target_macs=0.5)
    detect = small.model[-1]
    for branch in (*detect.cv2, *detect.cv3):   # the Detect outputs stay whole
        assert branch[-1].out_channels in (detect.reg_max * 4, detect.nc)
    with torch.no_grad():
        want = small(x)[0]
    yolo.model = small
    result = yolo.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False)[0]
    assert result.boxes.data.shape[1] == 6
    path = yolo.export(format="onnx", imgsz=64, simplify=False, verbose=False)
    session = ort.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-3 * float(want.abs().max()))

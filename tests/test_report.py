"""secateur.report: peak memory on known answers, layer widths, the written report and its refusals."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import secateur
from secateur.measure import count_macs, count_params
from secateur.measure.stats import si_count
from secateur.report import peak_memory, plot_acc_vs_macs, plot_gammas, plot_rate_curves, widths, write_report

F32 = 4
X = torch.randn(1, 1, 28, 28)
VGG8_WIDTHS = [32, 32, 64, 64, 128, 128, 256, 256, 10]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def vgg8_pair():
    torch.manual_seed(0)
    model = secateur.models.create_model("vgg8", in_channels=1)
    return model, secateur.prune(model, X, secateur.criteria.L1(), amount=0.5)


def test_peak_memory_single_conv_is_input_plus_output() -> None:
    conv = nn.Conv2d(16, 32, 1, bias=False)  # 1x1: no im2col scratch buffer
    x = torch.randn(4, 16, 28, 28)
    mem = peak_memory(conv, x)
    in_bytes, out_bytes = 4 * 16 * 28 * 28 * F32, 4 * 32 * 28 * 28 * F32
    assert mem["weights_bytes"] == 32 * 16 * F32
    assert (mem["input_bytes"], mem["output_bytes"]) == (in_bytes, out_bytes)
    assert mem["activation_bytes"] == in_bytes + out_bytes
    assert mem["peak_bytes"] == 32 * 16 * F32 + in_bytes + out_bytes


def test_peak_memory_counts_only_live_intermediates() -> None:
    """in (8x64) -> h1 (8x128) -> relu h2 (8x128) -> out (8x32): h1 is freed before ``out`` exists,
    so the peak is in + h1 + h2, not the sum of every tensor made."""
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    mem = peak_memory(net, torch.randn(8, 64))
    assert mem["activation_bytes"] == (8 * 64 + 8 * 128 + 8 * 128) * F32
    assert mem["weights_bytes"] == count_params(net) * F32
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_peak_memory_bad_input_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\).*Conv2d") as info:
        peak_memory(nn.Conv2d(16, 8, 1), torch.randn(1, 3, 8, 8))
    assert "\n" not in str(info.value)


def test_widths_of_pruned_and_unpruned_vgg8(vgg8_pair) -> None:
    model, small = vgg8_pair
    names = [f"features.{i}" for i in (0, 3, 7, 10, 14, 17, 21, 24)] + ["classifier"]
    assert widths(model) == dict(zip(names, VGG8_WIDTHS))
    pruned = widths(small, X)  # forward order
    assert list(pruned) == names
    assert list(pruned.values()) == [w // 2 for w in VGG8_WIDTHS[:-1]] + [10]  # classifier kept whole
    with pytest.raises(TypeError, match="nn.Module"):
        widths("vgg8")


def test_write_report_table_and_figures(vgg8_pair, tmp_path) -> None:
    model, small = vgg8_pair
    state = {k: v.clone() for k, v in small.state_dict().items()}
    p0, p1 = count_params(model), count_params(small)
    records = [{"stage": "baseline", "macs": 100, "params": p0, "acc": 0.92},
               {"stage": "sparse", "pass": 0, "macs": 100, "params": p0, "acc": 0.91, "gammas": [0.0, 0.01, 0.5, 1.0]},
               {"stage": "pruned", "pass": 0, "macs": 25, "params": p1, "acc": 0.9}]
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "eval_loss": 1.1 / (e + 1), "acc": 0.5 + e / 10,
                "eval_acc": 0.5 + e / 11} for e in range(3)]
    out = write_report(tmp_path / "rep", before=model, after=small, example_inputs=X, records=records,
                       history=history, accuracy={"before": 0.92, "after": 0.9},
                       onnx={"ONNX Runtime latency (ms)": (2.0, 0.5)}, title="vgg8 report", repeats=2)
    text = (out / "report.md").read_text()
    assert text.startswith("# vgg8 report\n")
    assert f"| Parameters | {si_count(p0)} | {si_count(p1)} | {p1 / p0:.2f}x |" in text
    for row in ("| MACs per image |", "| CPU latency, batch 1 (ms) |", "| CPU latency, batch 64 (ms) |",
                "| File size (safetensors) |", "| Peak inference memory, batch 1 |",
                "| Peak inference memory, batch 64 |"):
        assert sum(line.startswith(row) for line in text.splitlines()) == 1, row
    assert "| Accuracy | 92.00% | 90.00% | -2.00 pp |" in text
    assert "| ONNX Runtime latency (ms) | 2 | 0.5 | 0.25x |" in text
    pngs = ["widths.png", "gammas.png", "acc_vs_macs.png", "finetune.png"]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
        assert f"]({name})" in text
    assert text.count("*Figure ") == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["before"]["params"], metrics["after"]["params"]) == (p0, p1)
    assert [metrics[k]["macs"] for k in ("before", "after")] == [count_macs(m.eval(), X) for m in (model, small)]
    assert metrics["after"]["peak_bytes_b64"] > metrics["after"]["peak_bytes_b1"] > metrics["after"]["weights_bytes"]
    assert list(metrics["widths"]["after"].values()) == [w // 2 for w in VGG8_WIDTHS[:-1]] + [10]
    assert all(torch.equal(v, state[k]) for k, v in small.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no temporary left behind


def test_write_report_refuses_overwrite_then_replaces(vgg8_pair, tmp_path) -> None:
    model, small = vgg8_pair
    fast = {"batches": (1,), "repeats": 1}
    target = write_report(tmp_path / "rep", before=model, after=small, example_inputs=X, title="first", **fast)
    (target / "notes.txt").write_text("mine")
    old = {p.name: p.read_bytes() for p in target.iterdir()}
    assert sorted(old) == ["metrics.json", "notes.txt", "report.md", "widths.png"]  # only figures that apply
    with pytest.raises(FileExistsError, match="overwrite=True") as info:
        write_report(target, before=model, after=small, example_inputs=X, title="second", **fast)
    assert "\n" not in str(info.value) and str(target) in str(info.value)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == old
    write_report(target, before=model, after=small, example_inputs=X, title="second", overwrite=True, **fast)
    assert (target / "report.md").read_text().startswith("# second\n")
    assert not (target / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


@pytest.mark.parametrize(("kwargs", "culprit"), [
    ({"accuracy": {"before": 0.9}}, "accuracy"),
    ({"accuracy": {"before": 0.9, "after": float("nan")}}, r"accuracy\['after'\]"),
    ({"onnx": {"ORT (ms)": (1.0,)}}, r"onnx\['ORT \(ms\)'\]"),
    ({"records": [{"acc": 0.9}]}, r"records\[0\]"),
    ({"batches": (0,)}, "batches"),
])
def test_write_report_bad_input_names_culprit(vgg8_pair, tmp_path, kwargs, culprit) -> None:
    model, small = vgg8_pair
    with pytest.raises(ValueError, match=culprit) as info:
        write_report(tmp_path / "rep", before=model, after=small, example_inputs=X, **kwargs)
    assert "\n" not in str(info.value) and not (tmp_path / "rep").exists()
    with pytest.raises(TypeError, match="after must be Module"):
        write_report(tmp_path / "rep", before=model, after=None, example_inputs=X)


def test_plots_validate_and_write(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"points\[0\] lacks macs_ratio, acc"):
        plot_acc_vs_macs([{"label": "a"}], tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"gammas_by_label\['s'\]"):
        plot_gammas({"s": []}, tmp_path / "g.png")
    with pytest.raises(ValueError, match=r"must end in \.png"):
        plot_rate_curves({"conv1": [(0.0, 0.9)]}, tmp_path / "r.jpg")
    path = plot_rate_curves({"conv1": [(0.5, 0.8), (0.0, 0.9)], "conv2": [(0.0, 0.9), (0.5, 0.7)]},
                            tmp_path / "r.png", baseline=0.9)
    assert path.read_bytes().startswith(PNG_MAGIC) and sorted(p.name for p in tmp_path.iterdir()) == ["r.png"]

"""The ``secateur`` command as a user runs it: subprocesses, real files in a temporary directory."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secateur.cli import main
from secateur.cli._recipe import parse, shipped

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
TINY = """
[model]
arch = "{arch}"
[data]
subset = 256
test_subset = 256
batch_size = 64
calibration = 64
[baseline]
epochs = {epochs}
[method]
name = "{method}"
{options}
[finetune]
epochs = 1
[export]
onnx = {onnx}
runtimes = {runtimes}
{extra}"""


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "secateur.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def recipe(tmp: Path, name: str = "tiny.toml", *, arch="vgg8", epochs=1, method="prune",
           options='criterion = "l1"\namount = 0.5', onnx="true", runtimes="[]", extra="") -> Path:
    path = tmp / name
    path.write_text(TINY.format(arch=arch, epochs=epochs, method=method, options=options, onnx=onnx,
                                runtimes=runtimes, extra=extra))
    return path


def test_every_shipped_recipe_parses():
    names = shipped()
    assert {"slimming-vgg", "slimming-resnet56", "ista-vgg", "thinet-vgg", "channel-pruning-vgg", "l1-resnet56",
            "han-vgg", "thinet-resnet50", "demo"} <= set(names)
    for name in names:
        r = parse(name)
        assert r.method and r.model["arch"]


def test_inspect_and_measure(tmp_path):
    p = cli("inspect", "vgg8", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "prunable" in p.stdout and "features.24  Conv2d" in p.stdout and "5,308,416" in p.stdout
    p = cli("measure", "resnet18", "--input", "3,32,32", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "11.18M" in p.stdout


def test_profile_lists_the_slowest_layers_and_draws_them(tmp_path):
    p = cli("profile", "vgg8", "--runtime", "torch", "--top", "3", "--plot", "where.png", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("torch: ") and " ms" in lines[0] and lines[1].startswith("layer")
    assert len(lines) == 2 + 3 + 1 and (tmp_path / "where.png").stat().st_size > 1000   # 3 layers, the plot line
    p = cli("profile", "vgg8", "--runtime", "torch", "--plot", "where.png", cwd=tmp_path)
    assert p.returncode == 2 and "where.png exists" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_users_model_file(tmp_path):
    (tmp_path / "net.py").write_text(
        "from torch import nn\n"
        "def build(num_classes=10, in_channels=3):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    p = cli("inspect", "net.py:build", "--input", "1,28,28", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "8 ch  prunable" in p.stdout


def test_tiny_recipe_end_to_end_then_refuses_to_overwrite_then_exports(tmp_path):
    path = recipe(tmp_path, runtimes='["openvino", "mnn"]',                  # latency on two more runtimes
                  extra="[lowrank]\nenergy = 0.5\nmin_features = 8\n")   # the 10-way head: low rank
    p = cli("compress", str(path), "--out", "run", "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    stages = [r["stage"] for r in summary["records"]]
    assert stages == ["baseline", "pruned", "recalibrated", "finetuned", "low-rank"]
    assert list(summary["records"][-1]["ranks"]) == ["classifier"]
    table = p.stdout.splitlines()
    assert table[0].split() == ["stage", "params", "MACs", "accuracy"] and [t.split()[0] for t in table[1:6]] == stages
    assert summary["records"][1]["params"] < summary["records"][0]["params"]
    assert (run / "model" / "model.safetensors").is_file() and (run / "model.onnx").is_file()
    report = (run / "report" / "report.md").read_text()
    assert "| Parameters |" in report and "| ONNX Runtime latency, batch 1 (ms) |" in report
    assert "| openvino latency, batch 1 (ms) |" in report and "| mnn latency, batch 16 (ms) |" in report
    before = (run / "model" / "model.safetensors").stat().st_mtime_ns
    p = cli("compress", str(path), "--out", "run", cwd=tmp_path)
    assert p.returncode == 2 and "--force" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == before
    p = cli("export", "run", "--fp16", "--int8", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (run / "model-fp16.onnx").stat().st_size < (run / "model.onnx").stat().st_size
    assert (run / "model-int8.onnx").stat().st_size < (run / "model.onnx").stat().st_size
    p = cli("measure", "run", cwd=tmp_path)   # rebuilds the factorised head from pruning.json
    assert p.returncode == 0 and "run" in p.stdout, p.stderr[-2000:]


def killed_once(tmp: Path, path: Path, marker: Path) -> None:
    """Run ``compress path --out run`` in a subprocess and SIGKILL it as soon as ``marker`` exists."""
    proc = subprocess.Popen([sys.executable, "-m", "secateur.cli", "compress", str(path), "--out", "run",
                             "--no-progress"], cwd=tmp, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), f"{marker.name} was not written before the kill"


def test_resume_after_a_kill(tmp_path):
    path = recipe(tmp_path, epochs=4, onnx="false")
    state = tmp_path / "run" / "baseline" / "state.json"
    killed_once(tmp_path, path, state)
    done = json.loads(state.read_text())["epochs_done"]
    assert 1 <= done < 4
    p = cli("compress", str(path), "--out", "run", "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(state.read_text())["epochs_done"] == 4
    assert (tmp_path / "run" / "summary.json").is_file()


@pytest.mark.parametrize("options,expect", [
    ('criterion = "l1"\namount = 1.5', "amount=1.5"),
    ('criterion = "l1"\namount = 0.5\nmax_amount = 0', "max_amount=0"),
    ('criterion = "nope"\namount = 0.5', "criterion='nope'"),
    ('criterion = "l1"\nbogus = 1', "unknown key 'bogus'"),
])
def test_bad_recipes_get_one_line_and_exit_2(tmp_path, options, expect, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)          # in-process (the subprocess path is covered below): same main()
    assert main(["compress", str(recipe(tmp_path, options=options))]) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_unknown_method_and_missing_files(tmp_path):
    p = cli("compress", str(recipe(tmp_path, method="magic", options="")), cwd=tmp_path)
    assert p.returncode == 2 and "name='magic'" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = cli("compress", "missing.toml", cwd=tmp_path)
    assert p.returncode == 2 and "missing.toml" in p.stderr
    bad = tmp_path / "w.toml"
    bad.write_text(recipe(tmp_path).read_text().replace('arch = "vgg8"', 'arch = "vgg8"\nweights = "nope.safetensors"'))
    p = cli("compress", str(bad), "--out", "r2", cwd=tmp_path)
    assert p.returncode == 2 and "nope.safetensors" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_lowrank_energy_is_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path)
    path.write_text(path.read_text() + "[lowrank]\nenergy = 1.5\n")
    assert main(["compress", str(path)]) == 2
    err = capsys.readouterr().err
    assert "[lowrank] energy=1.5" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("runtimes,expect", [
    ('"all"', "[export] runtimes='all'; give \"installed\""),
    ("3", "[export] runtimes=3 must be a list or str"),
    ('["tensorrt"]', "[export] runtimes: runtime='tensorrt'; choose one of"),
])
def test_report_runtimes_are_checked_before_work(tmp_path, runtimes, expect, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compress", str(recipe(tmp_path, runtimes=runtimes))]) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1


def test_the_report_times_every_installed_deployment_runtime_by_default(tmp_path):
    from secateur import runtimes
    from secateur.cli._compress import report_runtimes
    path = recipe(tmp_path)
    path.write_text(path.read_text().replace("runtimes = []\n", ""))
    names = report_runtimes(parse(str(path)))
    assert names == runtimes.installed(exports=True)
    assert set(names) == {"onnxruntime", "openvino", "opencv", "mnn"}   # the dev extra installs them all


def test_sensitivity_scan_feeds_a_recipe(tmp_path, capsys, monkeypatch):
    import safetensors.torch
    import torch

    import secateur
    torch.manual_seed(0)
    model = secateur.models.create_model("vgg8", in_channels=1)
    safetensors.torch.save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    p = cli("sensitivity", "vgg8", "--weights", "w.safetensors", "--images", "64", "--rates", "0.25,0.5",
            "--tolerance", "1.0", "--out", "sens", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    scan = json.loads((tmp_path / "sens" / "ratios.json").read_text())
    assert scan["ratios"] == {name: 0.5 for name in scan["curves"]} and len(scan["curves"]) == 8
    assert (tmp_path / "sens" / "sensitivity.png").stat().st_size > 0
    p = cli("sensitivity", "vgg8", "--weights", "w.safetensors", "--out", "sens", cwd=tmp_path)
    assert p.returncode == 2 and "--force" in p.stderr
    path = recipe(tmp_path, options='criterion = "l1"\nratios = "sens/ratios.json"', onnx="false")
    path.write_text(path.read_text().replace('arch = "vgg8"', 'arch = "vgg8"\nweights = "w.safetensors"'))
    monkeypatch.chdir(tmp_path)
    assert main(["compress", str(path), "--out", "run", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["records"][1]["params"] < 0.3 * summary["records"][0]["params"]   # every conv at half width

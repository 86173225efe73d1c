"""Failures at the CLI's edges: one line, exit status 2, before any long work; never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from secateur.cli import main
from test_cli import ENV, recipe


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-2000:]
    return lines[0]


@pytest.mark.parametrize("module,extra", [("matplotlib", "report"), ("onnxruntime", "onnx")])
def test_a_missing_extra_is_named_before_any_work(tmp_path, module, extra):
    shadow = tmp_path / "shadow" / module
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise ImportError('no module named {module}')\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"), ENV.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", "secateur.cli", "compress", str(recipe(tmp_path)), "--out", "run"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    line = _one_line(p.stderr)
    assert module in line and f"secateur[{extra}]" in line
    assert not (tmp_path / "run").exists()


def test_more_classes_in_the_data_than_the_model_has(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path)
    path.write_text(path.read_text().replace('arch = "vgg8"', 'arch = "vgg8"\nnum_classes = 3'))
    assert main(["compress", str(path), "--out", "run"]) == 2
    assert "num_classes = 3" in _one_line(capsys.readouterr().err) and not (tmp_path / "run").exists()


def test_a_diverging_loss_is_reported_as_such(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path, onnx="false")
    path.write_text(path.read_text().replace("[baseline]\n", "[baseline]\nlr = 1e6\n"))
    assert main(["compress", str(path), "--out", "run", "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "diverged" in line and "epoch 1" in line and "lower the learning rate" in line


@pytest.mark.parametrize("args,expect", [
    (["inspect", "vgg8", "--classes", "0"], "--classes '0'"),
    (["measure", "vgg8", "--classes", "-1"], "--classes '-1'"),
    (["sensitivity", "vgg8", "--tolerance", "-1"], "--tolerance '-1'"),
    (["sensitivity", "vgg8", "--images", "0"], "--images '0'"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, monkeypatch, args, expect):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and expect in _one_line(capsys.readouterr().err)


def test_directories_that_are_not_runs_or_models(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["measure", "empty"]) == 2
    assert "neither a finished compress run" in _one_line(capsys.readouterr().err)
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"recipe": "x.toml"}))
    assert main(["measure", "run"]) == 2
    assert "summary.json is damaged" in _one_line(capsys.readouterr().err)


def test_a_latency_target_on_a_missing_runtime_is_one_line_before_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "openvino", None)
    path = recipe(tmp_path, options='criterion = "l1"\nlatency = 0.5\nruntime = "openvino"')
    assert main(["compress", str(path), "--out", "run"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "runtime 'openvino' needs openvino" in line and "secateur[runtimes]" in line
    assert not (tmp_path / "run").exists()
    path = recipe(tmp_path, options='criterion = "l1"\nlatency = 0.5\nruntime = "tensorrt"')
    assert main(["compress", str(path), "--out", "run"]) == 2
    assert "runtime='tensorrt'; choose one of torch" in _one_line(capsys.readouterr().err)

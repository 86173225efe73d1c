"""``compress --out DIR``: never touches files secateur did not write, resumes only what the recipe
still describes, and leaves a run that needs nothing outside it."""
from __future__ import annotations

import json
import shutil

from secateur.cli import main
from secateur.cli._rundir import STAMP
from test_cli import cli, killed_once, recipe


def test_a_directory_secateur_did_not_make_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    notes = tmp_path / "proj" / "report" / "paper.md"
    notes.parent.mkdir(parents=True)
    notes.write_text("notes")
    for force in ([], ["--force"]):
        assert main(["compress", str(recipe(tmp_path)), "--out", "proj", *force]) == 2
        err = capsys.readouterr().err
        assert "not made by secateur" in err and len(err.strip().splitlines()) == 1
        assert notes.read_text() == "notes" and sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["report"]
    (tmp_path / "afile").write_text("x")
    assert main(["compress", str(recipe(tmp_path)), "--out", "afile"]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "x"


def test_a_damaged_stamp_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / STAMP).write_text("{not json")
    assert main(["compress", str(recipe(tmp_path)), "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert STAMP in err and "damaged" in err and len(err.strip().splitlines()) == 1


def test_an_edited_recipe_redoes_its_stages_and_force_keeps_the_users_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path, options='criterion = "l1"\nmacs = 0.5', onnx="false")
    assert main(["compress", str(path), "--out", "run", "--no-progress"]) == 0
    run = tmp_path / "run"
    first = json.loads((run / "summary.json").read_text())
    baseline = sorted(p.stat().st_mtime_ns for p in (run / "baseline").rglob("*") if p.is_file())
    (run / "notes.md").write_text("mine")
    capsys.readouterr()

    path.write_text(path.read_text().replace("macs = 0.5", "macs = 0.25"))
    assert main(["compress", str(path), "--out", "run", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "reusing baseline" in err and "redoing method" in err and "redoing results" in err
    second = json.loads((run / "summary.json").read_text())
    ratio = [s["records"][1]["macs"] / s["records"][0]["macs"] for s in (first, second)]
    assert 0.45 < ratio[0] <= 0.5 and 0.2 < ratio[1] <= 0.25
    assert sorted(p.stat().st_mtime_ns for p in (run / "baseline").rglob("*") if p.is_file()) == baseline
    assert (run / "notes.md").read_text() == "mine"

    assert main(["compress", str(path), "--out", "run", "--no-progress"]) == 2   # finished, unchanged
    assert "--force" in capsys.readouterr().err
    assert main(["compress", str(path), "--out", "run", "--no-progress", "--force"]) == 0
    assert "kept everything else" in capsys.readouterr().err
    assert (run / "notes.md").read_text() == "mine" and (run / "summary.json").is_file()

    shutil.move(path, tmp_path / "elsewhere.toml")   # the run needs nothing outside it
    assert main(["measure", "run"]) == 0 and "run" in capsys.readouterr().out


def test_a_run_killed_after_its_method_then_edited_redoes_the_method(tmp_path):
    path = recipe(tmp_path, options='criterion = "l1"\nmacs = 0.5')   # onnx = true: the last stage takes a while
    killed_once(tmp_path, path, tmp_path / "run" / "records.json")
    path.write_text(path.read_text().replace("macs = 0.5", "macs = 0.25"))
    p = cli("compress", str(path), "--out", "run", "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "reusing baseline" in p.stderr and "redoing method" in p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0.2 < summary["records"][1]["macs"] / summary["records"][0]["macs"] <= 0.25

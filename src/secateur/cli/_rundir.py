"""A ``compress`` run directory: marked as secateur's when created, so that nothing else is ever
deleted, and resumed only where the recipe still holds.

The stamp (``.secateur-run.json``) records, per stage, the fingerprint of the recipe sections the
stage depends on (its own and every earlier stage's). On a rerun, the first stage whose fingerprint
changed is redone with everything after it: its outputs, and only those, are removed first.
``--force`` removes every output of secateur's and nothing else; a non-empty directory without a
stamp is refused.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path

from ..io import atomic_file, remove
from ._errors import UsageError

STAMP = ".secateur-run.json"
VERSION = 1
# stage, the recipe sections it reads (besides the earlier stages'), the entries it writes
STAGES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("baseline", ("model", "data", "baseline"), ("baseline",)),
    ("method", ("method", "finetune", "lowrank"),
     ("method", "model", "model-sparse", "records.json", "history.json")),
    ("results", ("export",), ("report", "summary.json", "baseline*.onnx", "model*.onnx", "runtimes")),
)
OWN = ("recipe.toml", STAMP, ".*.tmp", ".*.old")   # besides the stages' entries (atomic writes' temporaries)


def fingerprints(sections: dict) -> dict[str, str]:
    """Per stage: a hash of the recipe sections it and every earlier stage read."""
    out, seen = {}, {}
    for stage, reads, _ in STAGES:
        seen.update({s: sections.get(s) for s in reads})
        text = json.dumps(seen, sort_keys=True, default=str)
        out[stage] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def _ours(name: str, stages: tuple[str, ...] = tuple(s for s, _, _ in STAGES)) -> bool:
    patterns = [p for s, _, made in STAGES if s in stages for p in made]
    if len(stages) == len(STAGES):
        patterns += OWN
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _remove(out: Path, stages: tuple[str, ...]) -> list[str]:
    gone = []
    for entry in sorted(out.iterdir()):
        if _ours(entry.name, stages) and entry.name != STAMP:
            remove(entry)
            gone.append(entry.name)
    return gone


def _read_stamp(out: Path) -> dict | None:
    path = out / STAMP
    if not path.exists():
        return None
    try:
        stamp = json.loads(path.read_text())
        if not isinstance(stamp.get("stages"), dict):
            raise ValueError("no stages")
    except (OSError, ValueError, AttributeError) as e:
        raise UsageError(f"{path} is damaged ({type(e).__name__}): remove it, or choose another --out") from None
    return stamp


def prepare(out: Path, sections: dict, *, force: bool) -> list[str]:
    """Make ``out`` ready for a run of the recipe ``sections``; return what is reused and redone, as
    lines for the user. Raises UsageError, before any work, when ``out`` is not secateur's to write."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: choose a directory")
    stamp = _read_stamp(out) if out.exists() else None
    if out.exists() and stamp is None and any(out.iterdir()):
        raise UsageError(f"--out {out} is not empty and was not made by secateur compress: choose another "
                         f"directory (secateur never deletes files it did not write)")
    now = fingerprints(sections)
    lines = []
    if stamp is not None:
        if force:
            gone = _remove(out, tuple(now))
            lines.append(f"--force: removed secateur's {', '.join(gone) or 'nothing'}; kept everything else")
        else:
            old = stamp["stages"]
            changed = next((s for s in now if old.get(s) != now[s]), None)
            if changed is None and (out / "summary.json").exists():
                raise UsageError(f"{out} holds a finished run of this recipe; pass --force to redo it or --out "
                                 f"to choose another")
            redo = tuple(now)[tuple(now).index(changed):] if changed else ()
            for stage in now:
                if stage in redo and old.get(stage):
                    lines.append(f"redoing {stage}: the recipe changed since it ran")
                elif stage not in redo and any(_ours(e.name, (stage,)) for e in out.iterdir()):
                    lines.append(f"reusing {stage}: its recipe sections are unchanged")
            _remove(out, redo)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_file(out / STAMP, overwrite=True) as tmp:
            tmp.write_text(json.dumps({"version": VERSION, "stages": now}, indent=1))
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return lines

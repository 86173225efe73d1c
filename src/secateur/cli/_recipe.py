"""Recipes: a TOML file parsed and validated here, at the edge, into the library's typed configs.

    [model]     arch = "vgg8"; weights = "base.safetensors" (optional: without it [baseline] trains one)
    [data]      dataset = "fashion-mnist" | "cifar" | "folder"; path; subset; test_subset; batch_size; calibration
    [baseline]  epochs; lr; weight_decay
    [method]    name = "slimming" | "ista" | "thinet" | "channel-pruning" | "prune" | "han", and the fields
                of that method's config (secateur.methods: Slimming, ISTA, ThiNet, ChannelPruning, OneShot,
                Magnitude; nested Optim as a table: optim = {lr = 0.05}); its defaults are the library's
    [finetune]  epochs; lr; weight_decay; recalibrate (batches on which BatchNorm statistics are
                re-estimated after every cut, 0 = off); distill (the unpruned model as teacher)
    [export]    onnx; fp16; int8; runtimes = "installed" (default: every deployment runtime that imports
                here) | ["openvino", "mnn", ...] | [] (the report's latency before/after on each)
    [lowrank]   energy (0 = off; e.g. 0.9: truncated SVD of large Linear layers after pruning); min_features

Every key is checked (the [method] table against its config's fields, through secateur.methods'
registry); an unknown section, key or method, a value of the wrong type or out of range gets one line
naming the file, the section and the allowed values.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..methods import Method, from_dict, method_named, to_dict
from ..train import Optim
from ._errors import UsageError

_ANY_NUMBER = (int, float)
SCHEMA: dict[str, dict[str, tuple[type | tuple, Any]]] = {
    "model": {"arch": (str, None), "weights": (str, ""), "num_classes": (int, 0)},
    "data": {"dataset": (str, "fashion-mnist"), "path": (str, ""), "subset": (int, 0), "batch_size": (int, 128),
             "calibration": (int, 256), "image_size": (int, 224), "seed": (int, 0), "test_subset": (int, 0),
             "rgb": (bool, False)},
    "baseline": {"epochs": (int, 3), "lr": (_ANY_NUMBER, 0.1), "weight_decay": (_ANY_NUMBER, 5e-4)},
    "finetune": {"epochs": (int, 1), "lr": (_ANY_NUMBER, 0.01), "weight_decay": (_ANY_NUMBER, 1e-4),
                 "recalibrate": (int, 20), "distill": (bool, False)},
    "export": {"onnx": (bool, True), "fp16": (bool, False), "int8": (bool, False),
               "runtimes": ((list, str), "installed")},
    "lowrank": {"energy": (_ANY_NUMBER, 0.0), "min_features": (int, 256)},
}
DATASETS = ("fashion-mnist", "cifar", "folder")


@dataclass(frozen=True)
class Recipe:
    path: Path
    model: dict
    data: dict
    baseline: Optim
    baseline_epochs: int
    method: str                        # the method's name in the registry
    config: Any                        # the method's typed config
    finetune: Optim
    finetune_epochs: int
    export: dict = field(default_factory=dict)
    lowrank: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)   # every section as resolved (defaults filled, paths absolute)


def shipped() -> list[str]:
    """Names of the recipes that come with secateur."""
    return sorted(p.name[:-5] for p in resources.files("secateur.recipes").iterdir() if p.name.endswith(".toml"))


def locate(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    if name_or_path in shipped():
        return Path(str(resources.files("secateur.recipes") / f"{name_or_path}.toml"))
    raise UsageError(f"no recipe {name_or_path!r}: give a .toml file or one of {', '.join(shipped())}")


def parse(name_or_path: str) -> Recipe:
    path = locate(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    where = path.name
    unknown = sorted(set(raw) - set(SCHEMA) - {"method", "name"})
    if unknown:
        raise UsageError(f"{where}: unknown section [{unknown[0]}]; allowed: "
                         f"{', '.join(f'[{s}]' for s in [*SCHEMA, 'method'])}")
    sec = {s: _section(where, s, raw.get(s, {}), keys) for s, keys in SCHEMA.items()}
    if sec["model"]["arch"] is None:
        raise UsageError(f"{where}: [model] needs arch = \"...\" (e.g. \"vgg8\", \"resnet18\", \"file.py:build\")")
    if sec["data"]["dataset"] not in DATASETS:
        raise UsageError(f"{where}: [data] dataset={sec['data']['dataset']!r}; allowed: {', '.join(DATASETS)}")
    ft = _optim(where, "finetune", sec["finetune"])
    if isinstance(sec["export"]["runtimes"], str) and sec["export"]["runtimes"] != "installed":
        raise UsageError(f"{where}: [export] runtimes={sec['export']['runtimes']!r}; give \"installed\" or a list "
                         f"of runtime names (e.g. [\"openvino\", \"mnn\"], [] for none)")
    if not 0 <= sec["lowrank"]["energy"] < 1:
        raise UsageError(f"{where}: [lowrank] energy={sec['lowrank']['energy']!r} must be in [0, 1) (0 = off)")
    table = raw.get("method", {})
    if not isinstance(table, dict):
        raise UsageError(f"{where}: [method] must be a table")
    table = dict(table)
    try:
        method = method_named(table.pop("name", None))
        config = from_dict(method.config, _filled(where, path, method, table, sec["finetune"]["epochs"], ft))
    except (ValueError, TypeError) as e:
        raise UsageError(f"{where}: [method] {e}") from None
    return Recipe(path, sec["model"], sec["data"], _optim(where, "baseline", sec["baseline"]), sec["baseline"]["epochs"],
                  method.name, config, ft, sec["finetune"]["epochs"], sec["export"], sec["lowrank"],
                  _resolved(sec, method, config))


def _filled(where: str, path: Path, method: Method, table: dict, ft_epochs: int, ft: Optim) -> dict:
    """The [method] table with file keys read (``ratios = "scan/ratios.json"``, relative to the recipe)
    and the fields [finetune] sets."""
    for key, (field_name, entry) in method.files.items():
        if key in table:
            table[field_name] = _read_entry(where, path.parent, key, table.pop(key), entry)
    for key, field_name in method.finetune.items():
        if field_name in table:
            raise ValueError(f"{field_name} is set by [finetune] {key}")
        table[field_name] = ft_epochs if key == "epochs" else ft
    return table


def _read_entry(where: str, folder: Path, key: str, value: Any, entry: str):
    if not isinstance(value, str):
        raise ValueError(f"{key}={value!r} must be a file name")
    p = Path(value) if Path(value).is_absolute() else folder / value
    try:
        found = json.loads(p.read_text())[entry]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{key}={value!r}: cannot read {entry!r} from {p} ({type(e).__name__})") from None
    return found


def _resolved(sec: dict, method: Method, config) -> dict:
    """The recipe as run: every section with its defaults, the method's config in full (file keys
    read; the fields [finetune] sets left to it), model weights and data paths made absolute."""
    out = {s: dict(v) for s, v in sec.items()}
    out["method"] = {"name": method.name, **{k: v for k, v in to_dict(config).items()
                                             if k not in method.finetune.values()}}
    for section, key in (("model", "weights"), ("data", "path")):
        value = out[section].get(key)
        if value and not Path(value).is_absolute() and ":" not in value:
            out[section][key] = str(Path(value).resolve())
    return out


def dump(sections: dict) -> str:
    """``sections`` as TOML text that :func:`parse` reads back to the same recipe (None values, which
    mean "the default", are left out)."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def _toml(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(x)}" for k, x in v.items() if x is not None) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(v)


def _section(where: str, name: str, values: Any, keys: dict, label: str | None = None) -> dict:
    label = label or name
    if not isinstance(values, dict):
        raise UsageError(f"{where}: [{name}] must be a table")
    bad = sorted(set(values) - set(keys))
    if bad:
        raise UsageError(f"{where}: [{name}] unknown key {bad[0]!r} for {label}; allowed: {', '.join(keys)}")
    out = {}
    for key, (kind, default) in keys.items():
        v = values.get(key, default)
        if v is not None and key in values and (not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool)):
            want = (kind.__name__ if isinstance(kind, type) else "number" if kind is _ANY_NUMBER
                    else " or ".join(k.__name__ for k in kind))
            raise UsageError(f"{where}: [{name}] {key}={v!r} must be a {want}")
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise UsageError(f"{where}: [{name}] {key}={v!r} must be >= 0")
        out[key] = v
    return out


def _optim(where: str, name: str, s: dict) -> Optim:
    try:
        return Optim(lr=float(s["lr"]), weight_decay=float(s["weight_decay"]))
    except ValueError as e:
        raise UsageError(f"{where}: [{name}] {e}") from None

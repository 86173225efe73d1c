"""Recipes: a TOML file parsed and validated here, at the edge, into the library's typed configs.

    [model]     arch = "vgg8"; weights = "base.safetensors" (optional: without it [baseline] trains one)
    [data]      dataset = "fashion-mnist" | "cifar" | "folder"; path; subset; test_subset; batch_size; calibration
    [baseline]  epochs; lr; weight_decay
    [method]    name = "slimming" | "ista" | "thinet" | "channel-pruning" | "prune" | "han", and its options
    [finetune]  epochs; lr; weight_decay
    [export]    onnx; fp16; int8
    [lowrank]   energy (0 = off; e.g. 0.9: truncated SVD of large Linear layers after pruning); min_features

Every key is checked against the list below; an unknown section, key or method, a value of the wrong
type or out of range gets one line naming the file, the section and the allowed values.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..methods import ISTA, ChannelPruning, Magnitude, Slimming, ThiNet
from ..plan import Target
from ..train import Optim
from ._errors import UsageError

_ANY_NUMBER = (int, float)
SCHEMA: dict[str, dict[str, tuple[type | tuple, Any]]] = {
    "model": {"arch": (str, None), "weights": (str, ""), "num_classes": (int, 0)},
    "data": {"dataset": (str, "fashion-mnist"), "path": (str, ""), "subset": (int, 0), "batch_size": (int, 128),
             "calibration": (int, 256), "image_size": (int, 224), "seed": (int, 0), "test_subset": (int, 0),
             "rgb": (bool, False)},
    "baseline": {"epochs": (int, 3), "lr": (_ANY_NUMBER, 0.1), "weight_decay": (_ANY_NUMBER, 5e-4)},
    "finetune": {"epochs": (int, 1), "lr": (_ANY_NUMBER, 0.01), "weight_decay": (_ANY_NUMBER, 1e-4)},
    "export": {"onnx": (bool, True), "fp16": (bool, False), "int8": (bool, False)},
    "lowrank": {"energy": (_ANY_NUMBER, 0.0), "min_features": (int, 256)},
}
METHODS: dict[str, dict[str, tuple[type | tuple, Any]]] = {
    "slimming": {"sparsity": (_ANY_NUMBER, 1e-4), "amount": (_ANY_NUMBER, 0.7), "sparsity_epochs": (int, 3),
                 "passes": (int, 1), "lr": (_ANY_NUMBER, 0.05), "max_amount": (_ANY_NUMBER, 1.0)},
    "ista": {"rho": (_ANY_NUMBER, 1e-3), "alpha": (_ANY_NUMBER, 1.0), "cost_weighted": (bool, False),
             "sparsity_epochs": (int, 3), "lr": (_ANY_NUMBER, 0.05)},
    "thinet": {"amount": (_ANY_NUMBER, None), "macs": (_ANY_NUMBER, None), "max_layers": (int, None), "skip": (list, []),
               "gap": (bool, False), "layer_epochs": (int, 0), "samples": (int, None)},
    "channel-pruning": {"amount": (_ANY_NUMBER, None), "macs": (_ANY_NUMBER, None), "max_layers": (int, None),
                        "skip": (list, []),
                        "layer_epochs": (int, 0), "samples": (int, None)},
    "prune": {"criterion": (str, "l1"), "amount": (_ANY_NUMBER, None), "macs": (_ANY_NUMBER, None),
              "global_ranking": (bool, False), "round_to": (int, 1), "min_channels": (int, 1),
              "inner_only": (bool, False), "ratios": (str, None), "max_amount": (_ANY_NUMBER, 1.0)},
    "han": {"qualities": (list, [1.0, 1.5, 2.0, 2.2]), "epochs": (int, 1), "values": (str, "fp16")},
}
CRITERIA = ("random", "l1", "l2", "bnscale", "apoz", "taylor", "taylor2019", "thinet", "lasso")
DATASETS = ("fashion-mnist", "cifar", "folder")


@dataclass(frozen=True)
class Recipe:
    path: Path
    model: dict
    data: dict
    baseline: Optim
    baseline_epochs: int
    method: str
    options: dict
    config: Any                        # the method's typed config (None for "prune")
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
    m = dict(raw.get("method", {}))
    name = m.pop("name", None)
    if name not in METHODS:
        raise UsageError(f"{where}: [method] name={name!r}; allowed: {', '.join(METHODS)}")
    opts = _section(where, "method", m, METHODS[name], label=f"method {name}")
    ft = _optim(where, "finetune", sec["finetune"])
    if not 0 <= sec["lowrank"]["energy"] < 1:
        raise UsageError(f"{where}: [lowrank] energy={sec['lowrank']['energy']!r} must be in [0, 1) (0 = off)")
    try:
        config = _config(name, opts, sec["finetune"]["epochs"], ft)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{where}: [method] {e}") from None
    return Recipe(path, sec["model"], sec["data"], _optim(where, "baseline", sec["baseline"]), sec["baseline"]["epochs"],
                  name, opts, config, ft, sec["finetune"]["epochs"], sec["export"], sec["lowrank"],
                  _resolved(path, sec, name, opts))


def _resolved(path: Path, sec: dict, name: str, opts: dict) -> dict:
    """The recipe as run: every section with its defaults, file paths made absolute (model weights and
    data as the commands read them, from the working directory; ratios from the recipe's folder)."""
    out = {s: dict(v) for s, v in sec.items()}
    out["method"] = {"name": name, **opts}
    for section, key, base in (("model", "weights", Path.cwd()), ("data", "path", Path.cwd()),
                               ("method", "ratios", path.parent)):
        value = out[section].get(key)
        if value and not Path(value).is_absolute() and ":" not in value:
            out[section][key] = str((base / value).resolve())
    return out


def dump(sections: dict) -> str:
    """``sections`` as TOML text that :func:`parse` reads back to the same recipe (None values, which
    mean "the default", are left out)."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


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
            want = kind.__name__ if isinstance(kind, type) else "number"
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


def _config(name: str, o: dict, ft_epochs: int, ft: Optim):
    if name == "slimming":
        return Slimming(sparsity=o["sparsity"], amount=o["amount"], sparsity_epochs=o["sparsity_epochs"],
                        finetune_epochs=ft_epochs, passes=o["passes"], max_amount=o["max_amount"],
                        optim=Optim(lr=o["lr"], weight_decay=1e-4), finetune_optim=ft)
    if name == "ista":
        return ISTA(rho=o["rho"], alpha=o["alpha"], cost_weighted=o["cost_weighted"],
                    sparsity_epochs=o["sparsity_epochs"], finetune_epochs=ft_epochs,
                    optim=Optim(lr=o["lr"], weight_decay=1e-4), finetune_optim=ft)
    if name in ("thinet", "channel-pruning"):
        cls = ThiNet if name == "thinet" else ChannelPruning
        extra = {"gap": o["gap"]} if name == "thinet" else {}
        return cls(amount=o["amount"], macs=o["macs"], max_layers=o["max_layers"], skip=tuple(o["skip"]),
                   layer_epochs=o["layer_epochs"],
                   samples=o["samples"], finetune_epochs=ft_epochs, optim=ft, **extra)
    if name == "han":
        if o["values"] not in ("fp16", "int8", "fp32"):
            raise ValueError(f"values={o['values']!r}; allowed: fp16, int8, fp32")
        return Magnitude(qualities=tuple(o["qualities"]), epochs=o["epochs"], optim=ft)
    if o["criterion"] not in CRITERIA:
        raise ValueError(f"criterion={o['criterion']!r}; allowed: {', '.join(CRITERIA)}")
    if o["ratios"] is not None:
        if o["amount"] is not None or o["macs"] is not None or o["global_ranking"] or o["max_amount"] != 1.0:
            raise ValueError("ratios= (per-layer amounts) replaces amount=, macs=, global_ranking= and max_amount=")
        return None
    Target(amount=o["amount"], macs=o["macs"], global_ranking=o["global_ranking"], min_channels=o["min_channels"],
           round_to=o["round_to"], max_amount=o["max_amount"])
    return None

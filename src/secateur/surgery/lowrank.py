"""Low-rank factorisation of large ``nn.Linear`` layers by truncated SVD, on a copy of the model.

    small = low_rank(model, energy=0.9)      # each big Linear -> Sequential(Linear(in, r, bias=False), Linear(r, out))
    smaller = secateur.prune(small, x, secateur.criteria.L1(), amount=0.5)   # composes with channel pruning

Saving and loading. ``secateur.save`` records the factor pairs' ranks in ``pruning.json``
(``low_rank_ranks``) and ``secateur.load(path, model=Model())`` puts a pair of that rank in place of
each recorded ``nn.Linear`` of the fresh instance (:func:`factor_pair`) before loading the weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from secateur.graph import resolve_modules

__all__ = ["factor_pair", "is_factor_pair", "low_rank", "low_rank_ranks"]


def low_rank(model: nn.Module, *, energy: float = 0.9, rank: int | Mapping[str, int] | None = None,
             min_features: int = 256, ignore: Iterable[nn.Module | str] = ()) -> nn.Module:
    """Return a copy of ``model`` with large ``nn.Linear`` layers replaced by truncated-SVD factor pairs.

    Each ``nn.Linear(in, out)`` (the class itself: subclasses such as attention's ``out_proj``,
    whose weight is read directly, are left alone) with ``in >= min_features`` and ``out >= min_features`` (outside
    ``ignore``, modules or names whose whole subtree is left alone) becomes
    ``nn.Sequential(nn.Linear(in, r, bias=False), nn.Linear(r, out))`` with ``W ≈ U_r S_r V_rᵀ``
    split as ``(√S_r V_rᵀ)`` and ``(U_r √S_r)`` and the bias on the second layer. ``r`` is the
    smallest rank whose singular values hold ``energy`` of ``Σ s²`` or, with an int ``rank``, that
    rank (at most ``min(in, out)``); either way a layer is only factorised where it saves parameters
    (``r·(in + out) < in·out``). A mapping ``rank={name: r}`` factorises exactly the named Linear
    layers at those ranks, regardless of size and savings (used to rebuild a saved structure).

    The SVD runs on the weight's device in at least float32: over a minute per 4096×9216 layer on
    one CPU core, so prefer a GPU for VGG/AlexNet-sized heads. The new layers keep the old one's dtype, device, ``requires_grad`` and training
    flag; ``model`` is not changed. Code that reads a replaced layer's ``.weight`` directly (tied
    weights) breaks: pass such layers in ``ignore``.
    """
    _check_args(energy, rank, min_features)
    todo = list(_candidates(model, rank=rank, min_features=min_features, ignore=ignore))
    result = copy.deepcopy(model)
    replacement: dict[int, nn.Sequential] = {}
    for name, layer, r in todo:
        u, s, vh = _svd(layer.weight)
        r = _energy_rank(s, energy) if r is None else r
        if isinstance(rank, Mapping) or r * (layer.in_features + layer.out_features) < layer.weight.numel():
            replacement[id(result.get_submodule(name))] = _factorised(layer, u, s, vh, r)
    for parent in result.modules():
        for key, child in parent._modules.items():
            if child is not None and id(child) in replacement:
                parent._modules[key] = replacement[id(child)]
    return result


def low_rank_ranks(model: nn.Module) -> dict[str, int]:
    """``{name: rank}`` of the factor pairs in ``model``, as ``low_rank(..., rank=)`` takes them.

    A factor pair is an ``nn.Sequential`` of exactly two ``nn.Linear``, the first without bias,
    whose widths match; its rank is the width between them (after pruning, the pruned width).
    """
    return {name: m[0].out_features for name, m in model.named_modules() if is_factor_pair(m)}


def factor_pair(layer: nn.Linear, r: int) -> nn.Sequential:
    """``Sequential(Linear(in, r, bias=False), Linear(r, out))`` shaped to replace ``layer`` at rank ``r``,
    with the layer's dtype, device and training flag; its weights are freshly initialised."""
    kw = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    return nn.Sequential(nn.Linear(layer.in_features, r, bias=False, **kw),
                         nn.Linear(r, layer.out_features, bias=layer.bias is not None, **kw)).train(layer.training)


def is_factor_pair(m: nn.Module) -> bool:
    return (type(m) is nn.Sequential and len(m) == 2 and all(isinstance(x, nn.Linear) for x in m)
            and m[0].bias is None and m[0].out_features == m[1].in_features)


def _check_args(energy: float, rank: int | Mapping[str, int] | None, min_features: int) -> None:
    if isinstance(energy, bool) or not isinstance(energy, int | float) or not 0 < energy <= 1:
        raise ValueError(f"low_rank: energy={energy!r}; need a fraction in (0, 1], e.g. 0.9")
    if type(min_features) is not int or min_features < 1:
        raise ValueError(f"low_rank: min_features={min_features!r}; need an int >= 1")
    if rank is not None and not isinstance(rank, Mapping) and (type(rank) is not int or rank < 1):
        raise ValueError(f"low_rank: rank={rank!r}; need an int >= 1, a {{layer name: rank}} mapping, or None")


def _candidates(model: nn.Module, *, rank: int | Mapping[str, int] | None, min_features: int,
                ignore: Iterable[nn.Module | str]) -> Iterator[tuple[str, nn.Linear, int | None]]:
    """``(name, layer, rank)`` of the Linear layers to consider; rank ``None``: set by ``energy``.

    An int rank that would not save parameters is left out here, before any SVD is computed."""
    if isinstance(rank, Mapping):
        yield from ((name, *_explicit(model, name, r)) for name, r in rank.items())
        return
    skipped = resolve_modules(model, ignore)
    for name, m in model.named_modules():
        if (type(m) is not nn.Linear or min(m.in_features, m.out_features) < min_features
                or any(name == s or name.startswith(s + ".") for s in skipped)):
            continue
        r = None if rank is None else min(rank, m.in_features, m.out_features)
        if r is None or r * (m.in_features + m.out_features) < m.in_features * m.out_features:
            yield name, m, r


def _explicit(model: nn.Module, name: str, r: object) -> tuple[nn.Linear, int]:
    try:
        m = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"low_rank: rank= names {name!r}, which is not a module of the model; "
                         "pass the names of its nn.Linear layers") from None
    if type(m) is not nn.Linear:
        raise ValueError(f"low_rank: rank= names {name!r}, a {type(m).__name__}, not an nn.Linear")
    if type(r) is not int or not 1 <= r <= min(m.in_features, m.out_features):
        raise ValueError(f"low_rank: rank {r!r} for {name!r} ({m.in_features}->{m.out_features}); "
                         f"need an int from 1 to {min(m.in_features, m.out_features)}")
    return m, r


def _svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w = weight.detach()
    return torch.linalg.svd(w.float() if w.dtype in (torch.float16, torch.bfloat16) else w,
                            full_matrices=False)


def _energy_rank(s: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values ``s`` hold ``energy`` of the squared spectrum."""
    s2 = s.double() ** 2
    total = float(s2.sum())
    if total == 0:
        return 1
    held = torch.cumsum(s2, 0) / total
    return min(int((held < energy - 1e-12).sum()) + 1, len(s2))


@torch.no_grad()
def _factorised(layer: nn.Linear, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, r: int) -> nn.Sequential:
    """``Sequential(Linear(in, r, bias=False), Linear(r, out))`` from the SVD ``u s vh`` of ``layer.weight``."""
    root = s[:r].sqrt()
    pair = factor_pair(layer, r)
    first, second = pair
    first.weight.copy_(root[:, None] * vh[:r])
    second.weight.copy_(u[:, :r] * root)
    if layer.bias is not None:
        second.bias.copy_(layer.bias)
        second.bias.requires_grad_(layer.bias.requires_grad)
    first.weight.requires_grad_(layer.weight.requires_grad)
    second.weight.requires_grad_(layer.weight.requires_grad)
    return pair

"""Shrinking one layer in place: new, smaller Parameters; the module keeps its class and attributes.

Each function takes boolean keep-masks over the layer's channel positions (None = keep all).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm,
          nn.GroupNorm, nn.PReLU)


def take_(module: nn.Module, name: str, dim: int, index: np.ndarray) -> None:
    """Replace ``module.<name>`` by its slice along ``dim``, keeping Parameter-ness and requires_grad."""
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, torch.as_tensor(index, dtype=torch.long, device=t.device))
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    elif name in module._buffers:
        module._buffers[name] = new
    else:
        setattr(module, name, new)


def _uniform_rows(mask: np.ndarray, groups: int, what: str, name: str) -> np.ndarray:
    rows = mask.reshape(groups, -1)
    if not (rows == rows[:1]).all():
        raise RuntimeError(f"internal: {name} {what} keep-mask differs between groups")
    return rows[0]


def conv_(m: nn.modules.conv._ConvNd, keep_in: np.ndarray | None, keep_out: np.ndarray | None,
          name: str = "") -> None:
    """Shrink a (possibly grouped or transposed) convolution."""
    g = m.groups
    keep_in = np.ones(m.in_channels, bool) if keep_in is None else keep_in
    keep_out = np.ones(m.out_channels, bool) if keep_out is None else keep_out
    per_in, per_out = m.in_channels // g, m.out_channels // g
    if g == 1:
        new_g, in_pos, out_pos = 1, keep_in, keep_out
    elif per_in == 1:   # depthwise-like: whole groups go
        if not (np.repeat(keep_in, per_out) == keep_out).all():
            raise RuntimeError(f"internal: depthwise conv {name} in/out masks disagree")
        new_g, in_pos, out_pos = int(keep_in.sum()), np.ones(1, bool), np.ones(per_out, bool)
    else:               # grouped: the same positions go from every group
        new_g = g
        in_pos = _uniform_rows(keep_in, g, "input", name)
        out_pos = _uniform_rows(keep_out, g, "output", name)
    if m.transposed:    # weight (in, out/groups, k...)
        take_(m, "weight", 0, np.flatnonzero(keep_in))
        take_(m, "weight", 1, np.flatnonzero(out_pos))
    else:               # weight (out, in/groups, k...)
        take_(m, "weight", 0, np.flatnonzero(keep_out))
        take_(m, "weight", 1, np.flatnonzero(in_pos))
    take_(m, "bias", 0, np.flatnonzero(keep_out))
    m.in_channels, m.out_channels, m.groups = int(keep_in.sum()), int(keep_out.sum()), new_g


def linear_(m: nn.Linear, keep_in: np.ndarray | None, keep_out: np.ndarray | None, name: str = "") -> None:
    if keep_out is not None:
        take_(m, "weight", 0, np.flatnonzero(keep_out))
        take_(m, "bias", 0, np.flatnonzero(keep_out))
    if keep_in is not None:
        take_(m, "weight", 1, np.flatnonzero(keep_in))
    m.out_features, m.in_features = m.weight.shape


def norm_(m: nn.Module, keep: np.ndarray) -> None:
    """BatchNorm / InstanceNorm / LayerNorm / GroupNorm / PReLU: slice every per-channel tensor."""
    index = np.flatnonzero(keep)
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, name, None)
        if isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[0] == keep.size:
            take_(m, name, 0, index)
    sync_widths(m, int(keep.sum()))


def sync_widths(m: nn.Module, width: int | None = None) -> None:
    """Make a norm layer's width attributes agree with its (sliced) tensors."""
    if width is None:
        t = getattr(m, "weight", None)
        t = t if t is not None else getattr(m, "running_mean", None)
        if t is None:
            return
        width = t.shape[0]
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        m.num_features = width
    elif isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        m.normalized_shape = (width,)
    elif isinstance(m, nn.GroupNorm):
        if m.num_groups == m.num_channels:
            m.num_groups = width
        m.num_channels = width
    elif isinstance(m, nn.PReLU) and m.num_parameters > 1:
        m.num_parameters = width


def scale_in_(m: nn.Module, positions: np.ndarray, factor: float) -> None:
    """Multiply the weights that read input channels ``positions`` by ``factor``."""
    idx = torch.as_tensor(positions, dtype=torch.long)
    with torch.no_grad():
        if isinstance(m, nn.Linear):
            m.weight[:, idx] *= factor
        elif m.transposed:
            m.weight[idx] *= factor
        elif m.groups == 1:
            m.weight[:, idx] *= factor
        else:                           # grouped: input channel c is position c % per_in of group c // per_in
            per_in, per_out = m.in_channels // m.groups, m.out_channels // m.groups
            for c in positions.tolist():
                k, p = divmod(c, per_in)
                m.weight[k * per_out:(k + 1) * per_out, p] *= factor


def zero_in_(m: nn.Module, positions: np.ndarray) -> None:
    """Zero the weights that read input channels ``positions`` (the channels then contribute nothing)."""
    scale_in_(m, positions, 0.0)


def in_contribution(m: nn.Module, values: np.ndarray) -> torch.Tensor | None:
    """What constant input channels (``values``, nan = not constant / not removed) add to each output.

    Exact for Linear and 1x1 convs; for larger kernels with zero padding it is exact away from the
    borders only (the padded taps see 0, not the constant). None for layers where we do not fold.
    """
    const = np.nan_to_num(values, nan=0.0)
    if not const.any():
        return None
    v = torch.as_tensor(const, dtype=m.weight.dtype, device=m.weight.device)
    if isinstance(m, nn.Linear):
        return m.weight.detach() @ v
    if m.transposed or m.groups != 1:
        return None
    return m.weight.detach().flatten(2).sum(2) @ v

"""Handlers for torch.nn's layers."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._base import Norm, Weighted, is_batchnorm, register, take_


def _uniform_rows(mask: np.ndarray, groups: int, what: str, name: str) -> np.ndarray:
    rows = mask.reshape(groups, -1)
    if not (rows == rows[:1]).all():
        raise RuntimeError(f"internal: {name} {what} keep-mask differs between groups")
    return rows[0]


class Conv(Weighted):
    """Convolutions of any rank, grouped, depthwise and transposed (subclasses too)."""

    width_attrs = ("in_channels", "out_channels", "groups")

    def io(self, m):
        return m.in_channels, m.out_channels, m.groups

    def expects(self, m, got):
        spatial = len(m.kernel_size)
        if len(got) == spatial + 2:
            return (got[0], m.in_channels, *got[2:])
        return (m.in_channels, *got[1:]) if len(got) == spatial + 1 else None   # unbatched

    def implied_widths(self, m, attrs, shapes):
        w, g = shapes.get("weight"), attrs.get("groups", 1)
        if not w or len(w) < 2:
            return {}
        rows, cols = (w[1] * g, w[0]) if m.transposed else (w[0], w[1] * g)
        return {"out_channels": rows, "in_channels": cols}

    def channel_dim(self, m):
        return 1

    def taps(self, m):
        return int(np.prod(m.kernel_size))

    def out_rows(self, m, weight=None):
        w = (m.weight if weight is None else weight).detach()
        if m.transposed:   # (in, out/g, k...) -> (g, out/g, in/g, k)
            g = m.groups
            w = w.reshape(g, w.shape[0] // g, w.shape[1], -1).transpose(1, 2)
        return w.reshape(m.out_channels, -1)

    def shrink(self, m, keep_in, keep_out, name=""):
        g = m.groups
        keep_in = np.ones(m.in_channels, bool) if keep_in is None else keep_in
        keep_out = np.ones(m.out_channels, bool) if keep_out is None else keep_out
        per_out = m.out_channels // g
        if g == 1:
            new_g, in_pos, out_pos = 1, keep_in, keep_out
        elif m.in_channels == g:   # depthwise-like: whole groups go
            if not (np.repeat(keep_in, per_out) == keep_out).all():
                raise RuntimeError(f"internal: depthwise conv {name} in/out masks disagree")
            new_g, in_pos, out_pos = int(keep_in.sum()), np.ones(1, bool), np.ones(per_out, bool)
        else:                      # grouped: the same positions go from every group
            new_g = g
            in_pos = _uniform_rows(keep_in, g, "input", name)
            out_pos = _uniform_rows(keep_out, g, "output", name)
        if m.transposed:           # weight (in, out/groups, k...)
            take_(m, "weight", 0, np.flatnonzero(keep_in))
            take_(m, "weight", 1, np.flatnonzero(out_pos))
        else:                      # weight (out, in/groups, k...)
            take_(m, "weight", 0, np.flatnonzero(keep_out))
            take_(m, "weight", 1, np.flatnonzero(in_pos))
        take_(m, "bias", 0, np.flatnonzero(keep_out))
        for extra, dim in self.extra(m):
            if dim >= 0:
                take_(m, extra, dim, np.flatnonzero(keep_out))
        m.in_channels, m.out_channels, m.groups = int(keep_in.sum()), int(keep_out.sum()), new_g

    def scale_in(self, m, positions, factor):
        idx = torch.as_tensor(positions, dtype=torch.long)
        with torch.no_grad():
            if m.transposed:
                m.weight[idx] *= factor
            elif m.groups == 1:
                m.weight[:, idx] *= factor
            else:   # grouped: input channel c is position c % per_in of group c // per_in
                per_in, per_out = m.in_channels // m.groups, m.out_channels // m.groups
                for c in positions.tolist():
                    k, p = divmod(c, per_in)
                    m.weight[k * per_out:(k + 1) * per_out, p] *= factor

    def in_contribution(self, m, values):
        """Exact for 1x1 convs; for larger kernels with zero padding, away from the borders only."""
        const = np.nan_to_num(values, nan=0.0)
        if not const.any() or m.transposed or m.groups != 1:
            return None
        v = torch.as_tensor(const, dtype=m.weight.dtype, device=m.weight.device)
        return m.weight.detach().flatten(2).sum(2) @ v


    def plain(self, m, c_in, c_out):
        if m.transposed:
            return None
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(m.kernel_size)]
        groups = c_in if _depthwise(m) else m.groups
        return conv(c_in, c_out, m.kernel_size, m.stride, m.padding, m.dilation, groups, m.bias is not None,
                    m.padding_mode)

    def signature(self, m):
        return (f"k={tuple(m.kernel_size)} s={tuple(m.stride)} p={m.padding} d={tuple(m.dilation)} "
                f"g={'dw' if _depthwise(m) else m.groups} bias={m.bias is not None} mode={m.padding_mode}")

    def samples(self, m):
        return isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"

    def windows(self, m, x, positions, img, loc, out_shape):
        """Receptive fields gathered straight from ``x`` (no padded copy); taps in the padding read 0."""
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.kernel_size, m.stride, m.dilation, _pad(m)
        dev = x.device
        h, w = loc // out_shape[3], loc % out_shape[3]
        rows = (h.to(dev) * sh - ph)[:, None] + torch.arange(kh, device=dev) * dh     # (S, kh)
        cols = (w.to(dev) * sw - pw)[:, None] + torch.arange(kw, device=dev) * dw     # (S, kw)
        inside = ((rows >= 0) & (rows < x.shape[2]))[:, :, None] & ((cols >= 0) & (cols < x.shape[3]))[:, None, :]
        rows, cols = rows.clamp(0, x.shape[2] - 1), cols.clamp(0, x.shape[3] - 1)
        c = positions.to(dev)
        win = x[img.to(dev)[:, None, None, None], c[None, :, None, None], rows[:, None, :, None],
                cols[:, None, None, :]]
        win = win * inside[:, None].to(win.dtype)
        return win.reshape(win.shape[0], len(positions), kh * kw)


def _depthwise(m) -> bool:
    return m.groups == m.in_channels and m.groups > 1


def _pad(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        if any(k % 2 == 0 for k in conv.kernel_size):
            raise ValueError(f"{conv}: padding='same' with an even kernel is not supported for sampling")
        return tuple((d * (k - 1)) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
    return tuple(conv.padding)


class Linear(Weighted):
    width_attrs = ("in_features", "out_features")

    def io(self, m):
        return m.in_features, m.out_features, 1

    def expects(self, m, got):
        return (*got[:-1], m.in_features) if len(got) >= 1 else None

    def implied_widths(self, m, attrs, shapes):
        w = shapes.get("weight")
        return {"out_features": w[0], "in_features": w[-1]} if w and len(w) == 2 else {}

    def channel_dim(self, m):
        return -1

    def shrink(self, m, keep_in, keep_out, name=""):
        if keep_out is not None:
            take_(m, "weight", 0, np.flatnonzero(keep_out))
            take_(m, "bias", 0, np.flatnonzero(keep_out))
            for extra, dim in self.extra(m):
                if dim >= 0:
                    take_(m, extra, dim, np.flatnonzero(keep_out))
        if keep_in is not None:
            take_(m, "weight", 1, np.flatnonzero(keep_in))
        m.out_features, m.in_features = m.weight.shape

    def scale_in(self, m, positions, factor):
        with torch.no_grad():
            m.weight[:, torch.as_tensor(positions, dtype=torch.long)] *= factor

    def in_contribution(self, m, values):
        const = np.nan_to_num(values, nan=0.0)
        if not const.any():
            return None
        return m.weight.detach() @ torch.as_tensor(const, dtype=m.weight.dtype, device=m.weight.device)

    def plain(self, m, c_in, c_out):
        return nn.Linear(c_in, c_out, bias=m.bias is not None)

    def signature(self, m):
        return f"bias={m.bias is not None}"

    def samples(self, m):
        return True

    def locations(self, m, x, output):
        n = x.shape[0]   # (n, ..., features) -> (n, features, positions)
        return x.reshape(n, -1, x.shape[-1]).transpose(1, 2), output.reshape(n, -1, output.shape[-1]).transpose(1, 2)

    def windows(self, m, x, positions, img, loc, out_shape):
        return x[img, :, loc][:, positions, None]


class BatchNorm(Norm):
    """BatchNorm and InstanceNorm of any rank: per channel, exact."""

    width_attrs = ("num_features",)

    def channel_dim(self, m, dims, rank):
        return 1, True

    def absorbs_shift(self, m):
        return is_batchnorm(m) and m.running_mean is not None

    def expects(self, m, got):
        try:   # BN and InstanceNorm know the ranks they accept
            getattr(m, "_check_input_dim", lambda x: None)(torch.empty(got, device="meta"))
        except ValueError:
            return None
        return (got[0], m.num_features, *got[2:]) if len(got) >= 2 else None

    def set_width(self, m, width):
        m.num_features = width

    def implied_widths(self, m, attrs, shapes):
        found = shapes.get("weight") or shapes.get("running_mean")
        return {"num_features": found[0]} if found else {}


class GroupNorm(Norm):
    """Whole groups go (their channels are one unit): exact, but for a single group."""

    width_attrs = ("num_groups", "num_channels")

    def channel_dim(self, m, dims, rank):
        return 1, m.num_groups > 1

    def unit(self, m):
        return m.num_channels // m.num_groups if m.num_groups > 1 else 1

    def expects(self, m, got):
        return (got[0], m.num_channels, *got[2:]) if len(got) >= 2 else None

    def set_width(self, m, width):
        if m.num_groups > 1:
            m.num_groups = width // (m.num_channels // m.num_groups)
        m.num_channels = width

    def implied_widths(self, m, attrs, shapes):
        w = shapes.get("weight")
        return {"num_channels": w[0]} if w else {}


class LayerNorm(Norm):
    """Over the last dim (or over channels in a LayerNorm2d-style subclass): inexact."""

    width_attrs = ("normalized_shape",)

    def channel_dim(self, m, dims, rank):
        if len(m.normalized_shape) != 1:
            return None
        if dims == (rank - 1,):
            return rank - 1, False
        if type(m) is not nn.LayerNorm and dims == (1,):
            return 1, False
        return None

    def output_dim(self, m):
        return -1

    def width(self, m, x_shape, dim):
        return m.normalized_shape[0]

    def expects(self, m, got):
        n = len(m.normalized_shape)
        return (*got[:len(got) - n], *m.normalized_shape) if len(got) >= n else None

    def set_width(self, m, width):
        m.normalized_shape = (width,)

    def implied_widths(self, m, attrs, shapes):
        w = shapes.get("weight")
        return {"normalized_shape": tuple(w)} if w else {}


class PReLU(Norm):
    width_attrs = ("num_parameters",)

    def channel_dim(self, m, dims, rank):
        return 1, True

    def passthrough(self, m):
        return m.num_parameters == 1

    def set_width(self, m, width):
        if m.num_parameters > 1:
            m.num_parameters = width

    def implied_widths(self, m, attrs, shapes):
        w = shapes.get("weight")
        return {"num_parameters": w[0]} if w else {}


register(Conv(), nn.modules.conv._ConvNd)
register(Linear(), nn.Linear)
register(BatchNorm(), nn.modules.batchnorm._NormBase)
register(GroupNorm(), nn.GroupNorm)
register(LayerNorm(), nn.LayerNorm)
register(PReLU(), nn.PReLU)

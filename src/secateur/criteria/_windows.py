"""Sampling what the next layer sees: the input windows of a group's consumers at random positions.

ThiNet and LASSO channel selection both judge a channel group by the layers that *read* it (the
consumers: dense convs and Linear layers). For ``m`` random (image, output position) samples a
consumer's :class:`WindowTap` keeps the group's slice of the input window, ``(S, P, k*k)``, and the
consumer's output there, ``(S, out)``. Samples are spread evenly over the calibration images and
drawn from a generator seeded by (seed, consumer, batch), so two models with the same spatial sizes
(the original and a pruned copy) are sampled at exactly the same places.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..graph import ChannelGroup, Role
from ..layers import handler_for, is_weighted
from ..train import all_sum, processes
from ._record import CalibrationError, stream, taps


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a group: the input positions that carry the group, and their units."""

    name: str
    positions: np.ndarray
    unit: np.ndarray


def consumers(model: nn.Module, group: ChannelGroup) -> list[Consumer]:
    """The dense conv / Linear layers that read ``group``; a one-line error if there are none or one
    of them cannot be sampled (a grouped or transposed conv)."""
    out = []
    for m in group.members:
        if m.site.role is not Role.IN:
            continue
        layer = model.get_submodule(m.site.module)
        if is_weighted(layer) and handler_for(layer).samples(layer):
            out.append(Consumer(m.site.module, m.positions, m.unit))
        else:
            raise ValueError(f"channel group #{group.index} ({group.members[0].site}) is read by {m.site.module} "
                             f"({type(layer).__name__}); reconstruction needs dense Conv2d/Linear consumers: "
                             f"leave this layer out (layers=/ignore=)")
    if not out:
        raise ValueError(f"channel group #{group.index} ({group.members[0].site}) has no successor conv or Linear "
                         f"to reconstruct; leave this layer out (layers=/ignore=)")
    return out


def readable(model: nn.Module, group: ChannelGroup) -> bool:
    """Whether :func:`consumers` accepts ``group`` (it is read only by dense convs/Linears)."""
    try:
        consumers(model, group)
    except ValueError:
        return False
    return True


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """A consumer's weight as (out, in_channels, k*k)."""
    w = layer.weight.detach()
    return w.reshape(w.shape[0], w.shape[1], -1)


PER_IMAGE = 10   # samples per calibration image when none are asked for (both papers)


def per_image(samples: int | None, images: int, positions: int, layer: str) -> int:
    """Samples per image: ``samples`` spread over ``images``, or PER_IMAGE (at most ``positions``)
    when ``samples`` is None; asking for more than the images offer is an error."""
    if samples is None:
        return min(PER_IMAGE, positions)
    if isinstance(samples, bool) or not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples={samples!r} must be a positive int or None")
    if samples > images * positions:
        raise CalibrationError(f"samples={samples} is more than the {images} calibration images × {positions} "
                               f"positions of {layer} offer ({images * positions}); lower samples or add images")
    return math.ceil(samples / images)


class WindowTap:
    """Forward hook target for one consumer: samples windows of the group's input positions.

    ``samples`` (the paper's m; None: PER_IMAGE per image) are spread evenly over ``images``
    calibration images. A sample is an output location, or with ``pairs`` an (output channel,
    location) pair as in ThiNet. ``sink(windows, outputs, channels)`` receives, batch by batch,
    ``windows`` (S, P, k*k) of the group's positions, the consumer's outputs at the same places
    (S, out), and each sample's output channel (S,) (random unless ``pairs``, where it is drawn).
    """

    def __init__(self, name: str, layer: nn.Module, positions: np.ndarray, samples: int | None, images: int,
                 sink, seed: tuple[int, ...], pairs: bool = False):
        self.name, self.layer, self.samples, self.images, self.sink, self.seed = name, layer, samples, images, sink, seed
        self.handler = handler_for(layer)
        self.pos = torch.as_tensor(positions, dtype=torch.long)
        self.pairs, self.k = pairs, None
        self.batch, self.step = processes()   # the global batch index: under torchrun, every world-th

    def forward(self, inputs, output):
        x, n = inputs[0], inputs[0].shape[0]
        rng = np.random.default_rng([*self.seed, self.batch])
        self.batch += self.step
        x, output = self.handler.locations(self.layer, x, output)
        d_out, locs = output.shape[1], int(np.prod(output.shape[2:]))
        flat = self._draw(rng, n, locs * d_out if self.pairs else locs)
        per = locs * d_out if self.pairs else locs
        img, rest = flat // per, flat % per
        chan = rest // locs if self.pairs else rng.integers(0, d_out, size=len(flat))
        loc = torch.as_tensor(rest % locs)
        img, chan = torch.as_tensor(img), torch.as_tensor(chan, device=output.device)
        win = self.handler.windows(self.layer, x, self.pos, img, loc, tuple(output.shape))
        dev = output.device
        out = output.flatten(2)[img.to(dev), :, loc.to(dev)]
        self.sink(win.float(), out.float(), chan)

    def _draw(self, rng: np.random.Generator, n: int, locs: int) -> np.ndarray:
        """Distinct flat indices per image, image-major: image ``i`` owns [i*locs, (i+1)*locs)."""
        if self.k is None:
            self.k = per_image(self.samples, self.images, locs, self.name)
        k = min(self.k, locs)
        if k == locs:
            return np.arange(n * locs)
        return np.concatenate([i * locs + rng.choice(locs, size=k, replace=False) for i in range(n)])


def count_images(loader) -> int:
    """Images a calibration loader yields (from its data set's length when it has one)."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return sum(len(b[0] if isinstance(b, (tuple, list)) else b) for b in loader)


class _Fan:
    def __init__(self, taps):
        self.taps = taps

    def forward(self, inputs, output):
        for t in self.taps:
            t.forward(inputs, output)


def sample(model: nn.Module, data, items, *, samples: int | None, seed: int, input_shape=None,
           pairs: bool = False) -> None:
    """One calibration pass that feeds every ``(Consumer, sink)`` in ``items`` its sampled windows.

    The draws depend on (seed, consumer name, batch) only, so another model with the same layer names
    and spatial sizes (the original of a pruned copy) is sampled at the same images and positions.
    """
    images = count_images(data)
    if images == 0:
        raise CalibrationError("the calibration loader yielded no batches; give it at least one image "
                               "(e.g. secateur.data.calibration(dataset, n=256))")
    fans: dict[str, list[WindowTap]] = {}
    for c, sink in items:
        tap = WindowTap(c.name, model.get_submodule(c.name), c.positions, samples, images, sink,
                        (seed, zlib.crc32(c.name.encode())), pairs)
        fans.setdefault(c.name, []).append(tap)
    with taps(model, {name: _Fan(ts) for name, ts in fans.items()}):
        stream(model, data, input_shape=input_shape)
    for _, sink in items:   # under torchrun: each process's share of the sums, summed
        all_sum(sink, getattr(sink, "SUMS", ()))


def unit_sum(values: torch.Tensor, unit: np.ndarray, units: int) -> torch.Tensor:
    """Sum the last dim of ``values`` (positions) into ``units`` bins by ``unit``."""
    idx = torch.as_tensor(unit, dtype=torch.long, device=values.device)
    out = values.new_zeros(*values.shape[:-1], units)
    return out.index_add_(-1, idx, values)

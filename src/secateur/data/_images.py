"""In-memory image datasets: a uint8 N×C×H×W tensor, int64 labels, paper-style augmentation.

Augmentation is the CIFAR recipe of the ResNet/VGG pruning papers: zero-pad 4 pixels, take a random
crop of the original size, flip horizontally with probability 1/2, then normalise per channel. All of
it runs on uint8 tensors with torch ops and draws from torch's RNG, so ``torch.manual_seed`` (and the
DataLoader's per-worker seeding) makes it reproducible. ``__getitems__`` augments a whole batch at
once, which is what ``DataLoader`` calls when a dataset provides it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor
from torch.utils.data import Dataset

PAD = 4  # pixels of zero padding before the random crop


class DataError(ValueError):
    """A data set that cannot be read: missing, truncated or malformed files, bad arguments."""


@dataclass(frozen=True, eq=False)
class TensorImages(Dataset):
    """Images held in memory; items are ``(float32 C×H×W normalised tensor, int label)``.

    ``images`` is uint8 N×C×H×W, ``labels`` int64 N with values in ``[0, num_classes)``; ``mean`` and
    ``std`` are per channel, on the 0..1 pixel scale. ``augment`` switches pad+crop+flip on.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None
    augment: bool = False

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise DataError(f"images must be a uint8 N×C×H×W tensor, got {x.dtype} {tuple(x.shape)}")
        if y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise DataError(f"labels must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
        if len(self.mean) != x.shape[1] or len(self.std) != x.shape[1]:
            raise DataError(f"mean/std need {x.shape[1]} values each, got {self.mean} / {self.std}")
        if self.num_classes < 1 or (len(y) and not 0 <= int(y.min()) <= int(y.max()) < self.num_classes):
            raise DataError(f"labels must lie in [0, {self.num_classes})")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise DataError(f"{len(self.classes)} class names for {self.num_classes} classes")

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Height of the images (all shipped data sets are square)."""
        return self.images.shape[2]

    def with_augment(self, augment: bool) -> TensorImages:
        """A shallow copy sharing the image and label storage, with augmentation on or off."""
        return dataclasses.replace(self, augment=bool(augment))

    def as_rgb(self) -> TensorImages:
        """Grey images repeated over 3 channels (for models that take RGB, e.g. torchvision's)."""
        if self.in_channels == 3:
            return self
        if self.in_channels != 1:
            raise DataError(f"as_rgb needs 1-channel images, these have {self.in_channels}")
        return dataclasses.replace(self, images=self.images.expand(-1, 3, -1, -1), mean=self.mean * 3,
                                   std=self.std * 3)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        """The batch ``DataLoader`` asks for, augmented in one go (its own random draws)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx]
        if self.augment:
            x = pad_crop_flip_batch(x, PAD)
        return list(zip(self._normalise(x).unbind(0), self.labels[idx].tolist()))

    def _normalise(self, x: Tensor) -> Tensor:
        scale, shift = self._affine
        return x.float().mul_(scale).add_(shift)

    @cached_property
    def _affine(self) -> tuple[Tensor, Tensor]:
        """``x/255`` then ``(x - mean)/std`` folded into one multiply-add per channel."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return 1.0 / (255.0 * std), -mean / std


def pad_crop_flip_batch(batch: Tensor, pad: int) -> Tensor:
    """Zero-pad each image of a uint8 B×C×H×W batch by ``pad``, crop H×W at a random offset and flip
    it with probability 1/2, all with one gather. Each image gets its own offsets and flip coin from
    ``torch.randint``.
    """
    b, _, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # B×H'×W'×C
    dy = torch.randint(0, 2 * pad + 1, (b, 1))
    dx = torch.randint(0, 2 * pad + 1, (b, 1))
    flip = torch.randint(0, 2, (b, 1), dtype=torch.bool)
    rows = dy + torch.arange(h)
    cols = dx + torch.arange(w)
    cols = torch.where(flip, cols.flip(1), cols)  # a flipped crop reads its columns backwards
    out = padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]  # B×H×W×C
    return out.permute(0, 3, 1, 2)

"""Fashion-MNIST from the gzipped IDX files that Debian's ``dataset-fashion-mnist`` installs."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from secateur.data._images import DataError, TensorImages

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = (0.2860,), (0.3530,)
_PREFIX = {"train": "train", "test": "t10k"}
_INSTALL = "install it with `sudo apt-get install dataset-fashion-mnist` (or `make setup`)"
_UINT8 = 0x08  # IDX type code for unsigned bytes


def fashion_mnist(split: str = "train", root: str | Path | None = None,
                  augment: bool | None = None) -> TensorImages:
    """Fashion-MNIST, 60 000 train / 10 000 test 1×28×28 images in 10 classes, held in memory.

    ``root`` defaults to ``/usr/share/datasets/fashion-mnist``; ``augment`` defaults to on for
    ``"train"`` (4-pixel pad + random crop + flip) and off for ``"test"``.
    """
    if split not in _PREFIX:
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    folder = Path(root) if root is not None else DEFAULT_ROOT
    prefix = _PREFIX[split]
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", ndim=3)
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels for split {split!r}")
    if labels.size and labels.max() >= len(CLASSES):
        raise DataError(f"{folder / f'{prefix}-labels-idx1-ubyte.gz'}: label {labels.max()} is not in 0..9")
    return TensorImages(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=len(CLASSES), mean=MEAN, std=STD, classes=CLASSES,
        augment=split == "train" if augment is None else bool(augment),
    )


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes with ``ndim`` dimensions; one-line errors name it."""
    if not path.is_file():
        raise DataError(f"Fashion-MNIST file not found: {path}; {_INSTALL}")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    zero, dtype, dims = raw[0] | raw[1], raw[2], raw[3]
    if zero != 0 or dtype != _UINT8 or dims != ndim:
        raise DataError(f"{path}: bad IDX magic {raw[:4].hex()} (expected 0000{_UINT8:02x}{ndim:02x})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX header says {shape} = {expected} bytes, file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable

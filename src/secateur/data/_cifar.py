"""CIFAR-10 / CIFAR-100 from their binary on-disk format (never the pickled python version).

CIFAR-10 (``cifar-10-batches-bin``): ``data_batch_1..5.bin`` and ``test_batch.bin``, records of one
label byte + 3072 pixel bytes. CIFAR-100 (``cifar-100-binary``): ``train.bin`` and ``test.bin``,
records of a coarse and a fine label byte + 3072 pixel bytes; the fine label is used. Pixels are
3×32×32, channel-major (all red, then green, then blue), rows top to bottom.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from secateur.data._images import DataError, TensorImages

PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class _Format:
    num_classes: int
    folder: str  # the name the archive unpacks to
    files: dict[str, tuple[str, ...]]  # split -> file names
    label_bytes: int  # the label used is the last of these
    names_file: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None  # used when names_file is absent


CIFAR10 = _Format(
    10, "cifar-10-batches-bin",
    {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
    1, "batches.meta.txt", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
)
CIFAR100 = _Format(
    100, "cifar-100-binary", {"train": ("train.bin",), "test": ("test.bin",)},
    2, "fine_label_names.txt", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
)


def cifar(root: str | Path, split: str = "train", augment: bool | None = None) -> TensorImages:
    """CIFAR-10 or CIFAR-100 (told apart by the files present) from the binary version.

    ``root`` is ``cifar-10-batches-bin`` / ``cifar-100-binary`` itself or the folder holding it.
    ``augment`` defaults to on for ``"train"`` (4-pixel pad + random crop + flip), off for ``"test"``.
    """
    if split not in ("train", "test"):
        raise DataError(f"CIFAR split must be 'train' or 'test', got {split!r}")
    folder, fmt = _locate(Path(root))
    parts = [_read_records(folder / name, fmt) for name in fmt.files[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return TensorImages(
        images=torch.from_numpy(images.reshape(-1, 3, 32, 32)),
        labels=torch.from_numpy(labels),
        num_classes=fmt.num_classes, mean=fmt.mean, std=fmt.std,
        classes=_class_names(folder / fmt.names_file, fmt),
        augment=split == "train" if augment is None else bool(augment),
    )


def _kind(folder: Path) -> _Format | None:
    """Which format's files ``folder`` holds, if any."""
    found = [fmt for fmt in (CIFAR10, CIFAR100)
             if any((folder / n).is_file() for names in fmt.files.values() for n in names)]
    if len(found) > 1:
        raise DataError(f"{folder} holds both CIFAR-10 and CIFAR-100 files; keep them in separate folders")
    return found[0] if found else None


def _locate(root: Path) -> tuple[Path, _Format]:
    if not root.is_dir():
        raise DataError(f"CIFAR folder not found: {root}")
    fmt = _kind(root)
    if fmt is not None:
        return root, fmt
    inside = [(root / f.folder, f) for f in (CIFAR10, CIFAR100) if (root / f.folder).is_dir()]
    if len(inside) > 1:
        raise DataError(f"{root} holds both {CIFAR10.folder} and {CIFAR100.folder}; point at one of them")
    if inside and _kind(inside[0][0]) is inside[0][1]:
        return inside[0]
    raise DataError(
        f"no CIFAR binary files in {root}: expected {CIFAR10.folder}/ (data_batch_1..5.bin, test_batch.bin)"
        f" or {CIFAR100.folder}/ (train.bin, test.bin); the pickled python version is not read"
    )


def _read_records(path: Path, fmt: _Format) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N×3072 uint8) and labels (N uint8) of one binary file; one-line errors name it."""
    if not path.is_file():
        raise DataError(f"CIFAR file not found: {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    record = fmt.label_bytes + PIXELS
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte records")
    rows = raw.reshape(-1, record)
    labels = rows[:, fmt.label_bytes - 1]
    if labels.max() >= fmt.num_classes:
        raise DataError(f"{path}: label {labels.max()} is out of range for {fmt.num_classes} classes")
    return rows[:, fmt.label_bytes:], labels


def _class_names(path: Path, fmt: _Format) -> tuple[str, ...] | None:
    """Names from the archive's text file when it lists exactly the right number, else the default."""
    if path.is_file():
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        if len(names) == fmt.num_classes:
            return names
    return fmt.classes

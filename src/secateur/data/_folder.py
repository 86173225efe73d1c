"""Any ImageFolder tree (ImageNet layout) through ``torchvision.datasets.ImageFolder``."""

from __future__ import annotations

import copy
from pathlib import Path

from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from secateur.data._images import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EVAL_SPLITS = ("val", "test")


class FolderImages(ImageFolder):
    """``ImageFolder`` with the attributes secateur's other data sets expose, and ``with_augment``."""

    def __init__(self, root: Path, image_size: int, augment: bool) -> None:
        try:
            super().__init__(str(root), transform=folder_transform(image_size, augment))
        except (FileNotFoundError, OSError) as e:
            raise DataError(" ".join(str(e).split())) from None
        self.image_size = image_size
        self.augment = augment

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 3  # the default loader converts every image to RGB

    def with_augment(self, augment: bool) -> FolderImages:
        """A shallow copy sharing the file list, with the train or the eval transform."""
        view = copy.copy(self)
        view.augment = bool(augment)
        view.transform = folder_transform(self.image_size, view.augment)
        return view


def folder_transform(image_size: int, augment: bool) -> T.Compose:
    """Train: RandomResizedCrop + flip; eval: resize to size·256/224 + centre crop; then normalise."""
    if augment:
        geometry = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def image_folder(root: str | Path, split: str = "train", image_size: int = 224,
                 augment: bool | None = None) -> FolderImages:
    """Images in ``root/<split>/<class>/*``, or in ``root/<class>/*`` when there are no split folders.

    ``split`` is ``"train"``, ``"val"`` or ``"test"``; ``val`` and ``test`` stand in for each other
    when only one of the two folders exists. ``augment`` defaults to on for ``"train"`` only.
    """
    if split not in ("train", *_EVAL_SPLITS):
        raise DataError(f"image folder split must be 'train', 'val' or 'test', got {split!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive int, got {image_size!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    augment = split == "train" if augment is None else bool(augment)
    return FolderImages(_split_folder(root, split), image_size, augment)


def _split_folder(root: Path, split: str) -> Path:
    present = [s for s in ("train", *_EVAL_SPLITS) if (root / s).is_dir()]
    if not present:
        return root  # a single class-folder tree: the split only picks the transform
    wanted = (split,) if split == "train" else (split, *[s for s in _EVAL_SPLITS if s != split])
    for name in wanted:
        if name in present:
            return root / name
    raise DataError(f"{root} has no {' or '.join(n + '/' for n in wanted)} folder (found {present})")

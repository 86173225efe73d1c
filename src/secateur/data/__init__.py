"""Data sets for pruning and fine-tuning: Fashion-MNIST (default), CIFAR binary, ImageFolder.

    from secateur.data import calibration, fashion_mnist
    train = fashion_mnist("train")          # 60 000 augmented 1×28×28 images, read from local files
    calib = calibration(train, 512)         # DataLoader over 512 fixed, un-augmented images

Every data set exposes ``num_classes``, ``in_channels``, ``image_size``, ``classes`` and
``with_augment(flag)``; every unreadable file or bad argument raises a one-line ``DataError``.
"""

from secateur.data._calibration import calibration
from secateur.data._cifar import cifar
from secateur.data._fashion import fashion_mnist
from secateur.data._folder import FolderImages, image_folder
from secateur.data._images import DataError, TensorImages

__all__ = [
    "DataError",
    "FolderImages",
    "TensorImages",
    "calibration",
    "cifar",
    "fashion_mnist",
    "image_folder",
]

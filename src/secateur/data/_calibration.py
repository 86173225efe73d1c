"""Calibration sets: a fixed random sample of a data set, without augmentation."""

from __future__ import annotations

import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset

from secateur.data._images import DataError


def calibration(dataset: Dataset, n: int, *, seed: int = 0, batch_size: int = 64) -> DataLoader:
    """A DataLoader over ``n`` images drawn without replacement by ``numpy.random.Generator(seed)``.

    Augmentation is switched off through ``dataset.with_augment(False)`` when the data set has it
    (every secateur data set does), so each pass yields identical tensors in the same order.
    """
    size = len(dataset)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= size:
        raise DataError(f"calibration needs 1 <= n <= {size} (the data set's size), got n={n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int, got {batch_size!r}")
    plain = dataset.with_augment(False) if hasattr(dataset, "with_augment") else dataset
    indices = np.random.Generator(np.random.PCG64(seed)).choice(size, size=int(n), replace=False)
    return DataLoader(Subset(plain, indices.tolist()), batch_size=batch_size, shuffle=False)

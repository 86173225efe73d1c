"""Plain records shared by the walk, the groups and the surgery."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Role(enum.Enum):
    """How a site's tensor positions relate to channel units."""

    OUT = "out"      # a conv/linear layer's output rows (filters)
    IN = "in"        # a conv/linear layer's input columns
    NORM = "norm"    # a normalisation / PReLU layer's per-channel entries
    PARAM = "param"  # a bare parameter or buffer sliced along one dim (e.g. ConvNeXt's layer_scale)


@dataclass(frozen=True, eq=False)
class Site:
    """A place where channel units meet a layer's tensors: position ``p`` carries unit ``ids[p]``."""

    module: str
    role: Role
    ids: np.ndarray
    param: str | None = None      # PARAM: the attribute on ``module``
    dim: int = 0                  # PARAM: the dim that is sliced
    exact: bool = True            # False where removing a unit changes statistics (LayerNorm over channels)
    const: np.ndarray | None = field(default=None, repr=False)  # IN: value of a constant input, else nan

    def __str__(self) -> str:
        if self.role is Role.PARAM:
            return f"{self.module}.{self.param}[dim {self.dim}]" if self.module else f"{self.param}[dim {self.dim}]"
        return self.module if self.role is Role.NORM else f"{self.module}[{self.role.value}]"


@dataclass(frozen=True)
class Call:
    """One call of a weighted layer, with its layer facts, for estimating MACs without the model."""

    module: str
    positions: int   # output positions per output channel (batch x spatial)
    c_in: int = 0
    c_out: int = 0
    groups: int = 1
    taps: int = 1    # multiply-adds per output value per input channel of a group (kernel size)

"""Plain records shared by the walk, the groups and the surgery."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


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


@dataclass
class TInfo:
    """What the walk knows about one tensor value."""

    shape: tuple[int, ...]
    dims: tuple[int, ...] = ()          # dims that carry channel units
    ids: np.ndarray | None = None       # unit id per channel position, shape [shape[d] for d in dims]
    attr: str | None = None             # qualified name when the tensor is a model parameter/buffer
    attr_dim: int | None = None         # for a reshaped view of a per-channel parameter: its sliced dim
    cross: np.ndarray | None = None     # an outer product's column units (``q @ k.T`` over channels) ...
    cross_dim: int | None = None        # ... laid along this dim, beside the row units in ``ids``


@dataclass
class Record:
    """Everything the walk found; :mod:`.core` turns it into channel groups."""

    n_ids: int = 0
    edges: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    frozen: list[tuple[np.ndarray, str]] = field(default_factory=list)
    inexact: list[np.ndarray] = field(default_factory=list)   # units whose removal changes the output
    sites: list[Site] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    bn_after: dict[str, str] = field(default_factory=dict)   # conv name -> the BN that alone reads it
    outputs: list = field(default_factory=list)               # the output's structure and shapes
    out_ids: dict[str, np.ndarray] = field(default_factory=dict)        # layer -> its output units
    site_of: dict[tuple, int] = field(default_factory=dict)             # (layer, role, param) -> site
    _comp: tuple = field(default=(None, None), repr=False)              # components(), cached

    def components(self) -> np.ndarray:
        """The unit each id belongs to, as tied so far."""
        key = (self.n_ids, len(self.edges))
        if self._comp[0] != key:
            self._comp = key, self._components()
        return self._comp[1]

    def _components(self) -> np.ndarray:
        n = max(self.n_ids, 1)
        a, b = ((np.concatenate([e[i] for e in self.edges]) for i in (0, 1)) if self.edges
                else (np.zeros(0, np.int64),) * 2)
        return connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)),
                                    directed=False)[1]

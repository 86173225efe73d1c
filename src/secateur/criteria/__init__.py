"""Importance criteria: callables that score the units of a channel group (lowest goes first).

Weight criteria (Random, L1, L2, BNScale) need nothing else; data criteria (APoZ, Taylor, Taylor2019,
ThiNet, LASSO) record a calibration loader first: ``secateur.prune(model, x, APoZ(), amount=0.3,
data=loader)``. ``taps``/``stream`` are the recording machinery they share; ``consumers``/``readable``/
``sample`` the input windows ThiNet and LASSO (criteria and methods) reconstruct from.
"""
from ._base import Criterion, SiteCriterion, bind, out_rows
from ._record import CalibrationError, stream, taps
from ._windows import consumers, readable, sample
from .activation import APoZ, Taylor, Taylor2019
from .lasso import LASSO
from .thinet import ThiNet
from .weight import L1, L2, BNScale, LpNorm, Random

# One table of criterion names (recipes, configs' dict form, benchmarks).
NAMES: dict[str, type] = {"random": Random, "l1": L1, "l2": L2, "bnscale": BNScale, "apoz": APoZ, "taylor": Taylor,
                          "taylor2019": Taylor2019, "thinet": ThiNet, "lasso": LASSO}


def by_name(name: str) -> Criterion:
    """The criterion called ``name`` (see ``NAMES``), with its default settings."""
    if name not in NAMES:
        raise ValueError(f"criterion={name!r}; choose one of {', '.join(NAMES)}")
    return NAMES[name]()


def name_of(criterion: Criterion) -> str:
    """The name :func:`by_name` knows ``criterion`` by."""
    found = next((n for n, cls in NAMES.items() if type(criterion) is cls), None)
    if found is None:
        raise ValueError(f"{type(criterion).__name__} has no name in secateur.criteria.NAMES")
    return found


__all__ = ["NAMES", "by_name", "name_of", "consumers", "readable", "sample", "Criterion", "SiteCriterion", "bind", "out_rows", "taps", "stream", "CalibrationError",
           "Random", "L1", "L2", "LpNorm", "BNScale", "APoZ", "Taylor", "Taylor2019", "ThiNet", "LASSO"]

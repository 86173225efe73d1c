"""Importance criteria: callables that score the units of a channel group (lowest goes first).

Weight criteria (Random, L1, L2, BNScale) need nothing else; data criteria (APoZ, Taylor, Taylor2019,
ThiNet, LASSO) record a calibration loader first: ``secateur.prune(model, x, APoZ(), amount=0.3,
data=loader)``. ``taps``/``stream`` are the recording machinery they share.
"""
from ._base import Criterion, SiteCriterion, bind, out_rows
from ._record import CalibrationError, stream, taps
from .activation import APoZ, Taylor, Taylor2019
from .lasso import LASSO
from .thinet import ThiNet
from .weight import L1, L2, BNScale, LpNorm, Random

__all__ = ["Criterion", "SiteCriterion", "bind", "out_rows", "taps", "stream", "CalibrationError",
           "Random", "L1", "L2", "LpNorm", "BNScale", "APoZ", "Taylor", "Taylor2019", "ThiNet", "LASSO"]

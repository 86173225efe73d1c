"""Importance criteria: callables that score the units of a channel group (lowest goes first)."""
from ._base import Criterion, SiteCriterion, out_rows
from .weight import L1, L2, BNScale, LpNorm, Random

__all__ = ["Criterion", "SiteCriterion", "out_rows", "Random", "L1", "L2", "LpNorm", "BNScale"]

"""Plans: which channels each group keeps, and how to choose them for a target."""
from ._plan import Plan, estimate_cost, estimate_macs, layer_facts, site_masks
from ._planner import Target, TargetError, make_plan

__all__ = ["Plan", "Target", "TargetError", "make_plan", "estimate_cost", "estimate_macs", "layer_facts", "site_masks"]

"""What a pruned model costs: parameters, MACs, latency and file size.

``measure(model, example_inputs) -> Stats``; ``Stats.ratio(base)`` gives pruned ÷ unpruned and
``table({"base": s0, "pruned": s1})`` an aligned before/after table.
"""

from secateur.measure._measure import count_macs, count_params, macs_by_module, measure
from secateur.measure.stats import Stats, table

__all__ = ["Stats", "count_macs", "count_params", "macs_by_module", "measure", "table"]

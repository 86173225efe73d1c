"""Before/after pruning reports: peak memory, layer widths, plots and a markdown summary.

    secateur.report.peak_memory(model, x)      # weights and peak live activation bytes
    secateur.report.widths(model)              # output channels per conv/linear layer
    secateur.report.write_report("out/report", before=model, after=small, example_inputs=x)

The plots need matplotlib (``pip install secateur[report]``); they are drawn with the Agg backend
without touching pyplot's global state.
"""

from secateur.report._memory import peak_memory, weight_bytes, widths
from secateur.report._plots import plot_acc_vs_macs, plot_finetune, plot_gammas, plot_rate_curves, plot_widths
from secateur.report._write import write_report

__all__ = ["peak_memory", "plot_acc_vs_macs", "plot_finetune", "plot_gammas", "plot_rate_curves", "plot_widths",
           "weight_bytes", "widths", "write_report"]

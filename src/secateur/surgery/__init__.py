"""Surgery: physically removing channels from layers, in place, per layer type."""
from ._apply import apply, silence

__all__ = ["apply", "silence"]

"""Surgery: physically removing channels from layers, in place, per layer type; ``low_rank``
factorises large Linear layers by truncated SVD (on a copy)."""
from ._apply import apply, silence
from ._verify import SurgeryError
from .lowrank import low_rank, low_rank_ranks

__all__ = ["SurgeryError", "apply", "low_rank", "low_rank_ranks", "silence"]

"""One place that knows each layer type: channel dims, width attributes, shrinking, scaling, MACs.

Tracing, surgery, save/load, criteria and the planner all ask :func:`handler_for`; none keeps an
isinstance chain of its own. A new layer type is one :class:`Weighted` or :class:`Norm` subclass and
one :func:`register` call (subclasses of a registered type share its handler).
"""
from ._base import Block, Layer, Norm, Weighted, handler_for, is_batchnorm, is_weighted, register, take_
from . import _builtin, _thirdparty  # noqa: F401  (register torch.nn's layers and known blocks)
from ._probe import own_forward, probe

__all__ = ["Block", "Layer", "Weighted", "Norm", "handler_for", "is_batchnorm", "is_weighted", "register", "take_",
           "own_forward", "probe"]

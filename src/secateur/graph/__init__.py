"""Tracing a model and grouping its channels into what must be removed together."""
from ._types import Call, Role, Site
from .core import ChannelGroup, Graph, Member, TraceError, as_tuple, resolve_modules, trace

__all__ = ["trace", "Graph", "ChannelGroup", "Member", "Site", "Role", "Call", "TraceError",
           "as_tuple", "resolve_modules"]

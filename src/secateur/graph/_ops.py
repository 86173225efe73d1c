"""Which torch operations move, mix or leave channels alone: the walk's lookup tables.

An operation the tables do not name is *unknown*: the walk freezes every channel it touches.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

# Parameter-free modules whose output has the input's channels, position for position.
PASSTHROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softplus, nn.Identity,
    nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Upsample,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)

# Parameter-free modules that only move elements around: resolved on label tensors. (nn.Unflatten is
# not here: its sizes are literals we cannot see in the graph, so it freezes what it touches.)
MOVEMENT_MODULES = (nn.Flatten, nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle)

# Functions / methods applied element by element (any number of tensors, broadcasting).
ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd,
    operator.imul, operator.isub, operator.itruediv, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs, torch.exp, torch.sqrt,
    torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.maximum, torch.minimum,
    torch.where, torch.pow,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.dropout, F.dropout2d, F.alpha_dropout,
}
ELEMENTWISE_METHODS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "abs", "exp", "sqrt", "pow",
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "clamp_max",
    "float", "half", "double", "to", "clone", "detach", "contiguous", "__neg__",
}
# Methods that read only another tensor's dtype/device: ``x.type_as(y)`` is x; ``y.new_full(size)`` is
# a new tensor.
LIKE_METHODS = {"type_as", "new_full", "new_zeros", "new_ones", "new_empty", "new_tensor"}

# Spatial operations: channels pass through unchanged (the channel dim is not pooled or resized).
SPATIAL_FUNCTIONS = {
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear,
}

# Pure data movement: every output element is some input element. Resolved by running the very same
# call on tensors of channel labels.
MOVEMENT_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.swapaxes, torch.movedim,
    torch.cat, torch.concat, torch.concatenate, torch.stack, torch.split, torch.chunk, torch.squeeze,
    torch.unsqueeze, torch.narrow, torch.roll, torch.flip, torch.t, torch.unbind, torch.select,
    torch.channel_shuffle, F.channel_shuffle, F.pixel_shuffle, F.pixel_unshuffle, operator.getitem,
}
MOVEMENT_METHODS = {
    "view", "reshape", "permute", "transpose", "flatten", "unflatten", "squeeze", "unsqueeze", "split",
    "chunk", "narrow", "expand", "expand_as", "repeat", "flip", "roll", "t", "movedim", "unbind",
    "select", "view_as", "reshape_as", "swapaxes", "__getitem__",
}

# Reductions with a `dim` argument: fine over spatial dims, channel-mixing over the channel dim.
REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
REDUCTION_METHODS = {"mean", "sum", "amax", "amin"}

MATMUL = {"matmul", "bmm", "__matmul__"}   # torch.matmul, operator.matmul, Tensor.bmm, ...

SOFTMAX = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.normalize}
SOFTMAX_METHODS = {"softmax", "log_softmax"}

# Functional normalisations (seen when a norm subclass outside torch.nn is traced through):
# function -> (positions of per-channel tensors among the args, normalised over channels?)
FUNCTIONAL_NORMS = {
    F.batch_norm: ((1, 2, 3, 4), False),
    F.instance_norm: ((1, 2, 3, 4), False),
    F.layer_norm: ((2, 3), True),
    F.group_norm: ((2, 3), True),
}

# torchvision's region pooling: each output channel pools the same input channel of every level.
ROI_POOLS = {"roi_align", "roi_pool", "_multiscale_roi_align"}

# Calls that return no tensor and carry no data (asserts, logging): ignored.
IGNORED_FUNCTIONS = {torch._assert, getattr}


def kind_of(op: str, target) -> str:
    """Classify a call_function / call_method node target into one of the walk's handlers."""
    if op == "call_method":
        for kind, names in (("elementwise", ELEMENTWISE_METHODS), ("movement", MOVEMENT_METHODS),
                            ("reduce", REDUCTION_METHODS), ("softmax", SOFTMAX_METHODS),
                            ("matmul", MATMUL), ("like", LIKE_METHODS)):
            if target in names:
                return kind
        return "unknown"
    if target in IGNORED_FUNCTIONS:
        return "ignore"
    for kind, table in (("elementwise", ELEMENTWISE_FUNCTIONS), ("spatial", SPATIAL_FUNCTIONS),
                        ("movement", MOVEMENT_FUNCTIONS), ("reduce", REDUCTIONS), ("softmax", SOFTMAX),
                        ("norm", FUNCTIONAL_NORMS)):
        if target in table:
            return kind
    name = getattr(target, "__name__", "")
    if name == "stochastic_depth":  # torchvision.ops: identity in eval, per-sample scaling in training
        return "elementwise"
    if name == "pad":
        return "pad"
    if name in MATMUL and (getattr(target, "__module__", "") or "") in ("torch", "_operator", "operator"):
        return "matmul"
    if name in ROI_POOLS and "torchvision" in (getattr(target, "__module__", "") or ""):
        return "roi"
    return "unknown"


def op_name(op: str, target) -> str:
    """A short human name for an fx target, for messages."""
    if op == "call_method":
        return f"Tensor.{target}"
    mod = getattr(target, "__module__", None) or ""
    return f"{mod}.{getattr(target, '__name__', repr(target))}".lstrip(".")

"""The published recipes, each one call that ends in a smaller (or sparser) model and its records.

    result = slimming(model, train_loader, x, Slimming(sparsity=1e-4, amount=0.7), eval_loader=test)
    result = ista(model, train_loader, x, ISTA(rho=1e-3), eval_loader=test)
    result = magnitude(model, train_loader, x, Magnitude(qualities=(1.0, 1.5, 2.0)), eval_loader=test)
    result = thinet(model, calib_loader, x, ThiNet(amount=0.5), train_loader=train, eval_loader=test)
    result = channel_pruning(model, calib_loader, x, ChannelPruning(macs=0.5), eval_loader=test)
    result.model, result.records                      # the new model; one record per stage

The caller's model is never changed. Each method is a small frozen config plus the callbacks it adds
to ``secateur.train.fit`` (SparsityL1, ProximalL1, HoldMasks), usable on their own. Every method
takes fit's run options: ``checkpoint=``/``resume=`` (each training stage in its own sub-directory),
``progress=`` and ``compile=``.
"""
from ._common import Result, record
from ._magnitude_masks import HoldMasks, apply_masks_, magnitude_masks, sparsity
from .ista import ISTA, ProximalL1, ista, rescale
from .layerwise import ChannelPruning, ThiNet, channel_pruning, gap_head, thinet
from .magnitude import Magnitude, magnitude
from .sensitivity import sensitivity, sensitivity_ratios
from .slimming import Slimming, SparsityL1, slimming

__all__ = ["ChannelPruning", "HoldMasks", "ISTA", "Magnitude", "ProximalL1", "Result", "Slimming", "SparsityL1",
           "ThiNet", "apply_masks_", "channel_pruning", "gap_head", "ista", "magnitude", "magnitude_masks",
           "record", "rescale", "sensitivity", "sensitivity_ratios", "slimming", "sparsity", "thinet"]

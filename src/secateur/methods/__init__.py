"""The published recipes, each one call that ends in a smaller (or sparser) model and its records.

    result = slimming(model, train_loader, x, Slimming(sparsity=1e-4, amount=0.7), eval_loader=test)
    result = ista(model, train_loader, x, ISTA(rho=1e-3), eval_loader=test)
    result = magnitude(model, train_loader, x, Magnitude(qualities=(1.0, 1.5, 2.0)), eval_loader=test)
    result = thinet(model, calib_loader, x, ThiNet(amount=0.5), train_loader=train, eval_loader=test)
    result = channel_pruning(model, calib_loader, x, ChannelPruning(macs=0.5), eval_loader=test)
    result = one_shot(model, x, OneShot(criterion=L1(), amount=0.5, finetune_epochs=3), train_loader=train)
    result = one_shot(model, x, OneShot(macs=0.25, allocation="greedy"), train_loader=train)  # per-layer rates
    result.model, result.records                      # the new model; one record per stage

    result = compress(model, Slimming(amount=0.5), example_inputs=x, train_loader=train)   # any of them

``compress`` dispatches on the config's type through one registry (``methods()``: name -> Method);
``to_dict``/``from_dict`` turn a config into a plain dict and back (a recipe's [method] table).

The caller's model is never changed. Each method is a small frozen config plus the callbacks it adds
to ``secateur.train.fit`` (SparsityL1, ProximalL1, HoldMasks), usable on their own. Every method
takes the same run options (``Stages``): fit's ``checkpoint=``/``resume=`` (each training stage in its
own sub-directory), ``progress=``, ``seed=`` and ``compile=``; ``recalibrate=20`` (batches on which
BatchNorm statistics are re-estimated after every cut: a "recalibrated" record; 0 turns it off) and
``distill=False`` (fine-tune with the unpruned model as teacher).
"""
from ._common import Result, Stages, record
from ._config import from_dict, to_dict
from ._records import StageRecord
from ._registry import Data, Method, compress, method_for, method_named, methods, register
from ._magnitude_masks import HoldMasks, apply_masks_, magnitude_masks, sparsity
from .allocation import Allocation, allocate
from .ista import ISTA, ProximalL1, ista, rescale
from .layerwise import ChannelPruning, ThiNet, channel_pruning, gap_head, thinet
from .magnitude import Magnitude, magnitude
from .oneshot import OneShot, one_shot
from .sensitivity import sensitivity, sensitivity_ratios
from .slimming import Slimming, SparsityL1, slimming

__all__ = ["Allocation", "ChannelPruning", "Data", "HoldMasks", "ISTA", "Magnitude", "Method", "OneShot", "ProximalL1", "Result",
           "Slimming", "SparsityL1", "StageRecord", "Stages", "ThiNet", "allocate", "apply_masks_", "channel_pruning", "compress", "from_dict", "gap_head",
           "ista", "magnitude", "magnitude_masks", "method_for", "method_named", "methods", "one_shot", "register",
           "to_dict",
           "record", "rescale", "sensitivity", "sensitivity_ratios", "slimming", "sparsity", "thinet"]

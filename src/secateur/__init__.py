"""secateur: structured pruning for real CNNs — physically smaller, measurably faster models.

    graph = secateur.trace(model, x)                 # channel groups: what must be cut together
    small = secateur.prune(model, x, secateur.criteria.L1(), target_macs=0.5)
    small = secateur.recalibrate_bn(small, train_loader)   # BN statistics that fit the pruned network
    stats = secateur.measure(small, x)               # params, MACs, latency, bytes on disk
    secateur.save(small, "out/"); again = secateur.load("out/", model=fresh_model)

Training and the training-time methods: ``secateur.data`` (Fashion-MNIST, CIFAR binary, ImageFolder),
``secateur.train.fit`` and ``secateur.methods`` (slimming, ista, magnitude).
"""
from . import criteria, data, layers, methods, models, train
from .graph import ChannelGroup, Graph, TraceError, trace
from .io import LoadError, load, save
from .measure import Stats, measure, table
from .plan import Plan, Target, TargetError
from .prune import plan_pruning, prune
from .surgery import SurgeryError, apply, silence
from .train import recalibrate_bn

__all__ = ["trace", "prune", "plan_pruning", "apply", "silence", "recalibrate_bn", "measure", "table", "save", "load",
           "criteria",
           "data", "layers", "methods", "models", "train", "Graph", "ChannelGroup", "Plan", "Target", "Stats", "TraceError", "TargetError",
           "LoadError", "SurgeryError"]

"""The models users bring, from the packages they use: torchvision detection, segmentation and video,
segmentation_models_pytorch, Ultralytics YOLO and timm. All built offline from configs with random
weights (nothing downloads), at small inputs so each traces in seconds.

Detectors' final boxes go through top-k and NMS, which a 1e-7 change can reorder, so their
exactness is judged on ``probes``: the modules whose outputs feed the post-processing.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import secateur
from secateur.forward import flat_tensors

os.environ.setdefault("YOLO_OFFLINE", "1")


@dataclass(frozen=True)
class RealEntry:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple]
    probes: tuple[str, ...] = ()     # modules whose outputs are compared; () = the model's outputs
    min_groups: int = 1              # exact prunable groups it must have at least
    slow: bool = False
    max_macs: float = 0.5005         # measured MACs after target_macs=0.5 (prune counts what the cut runs)


def _seeded(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return factory().eval()
    return build


def _images(*sizes: tuple[int, int]) -> Callable[[], tuple]:
    def make() -> tuple:
        gen = torch.Generator().manual_seed(0)
        return ([torch.rand(3, h, w, generator=gen) for h, w in sizes],)
    return make


def _batch(*shape: int) -> Callable[[], tuple]:
    return lambda: (torch.randn(*shape, generator=torch.Generator().manual_seed(0)),)


def _detection(name: str, probes: tuple[str, ...], min_groups: int, slow: bool = False, **kw) -> RealEntry:
    import torchvision
    thresh = ({"box_score_thresh": 0.0, "box_detections_per_img": 20} if "rcnn" in name
              else {"score_thresh": 0.0, "detections_per_img": 20})
    sizes = {} if name.startswith("ssd") else {"min_size": 64, "max_size": 64}
    build = _seeded(lambda: torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                                         num_classes=5, **thresh, **sizes, **kw))
    return RealEntry(f"tv/{name}", build, _images((64, 64), (56, 64)), probes, min_groups, slow)


def _torchvision(name: str, shape: tuple[int, ...], min_groups: int, **kw) -> RealEntry:
    import torchvision
    build = _seeded(lambda: torchvision.models.get_model(name, weights=None, num_classes=5, **kw))
    return RealEntry(f"tv/{name}", build, _batch(*shape), (), min_groups)


def _smp(arch: str, encoder: str, min_groups: int) -> RealEntry:
    import segmentation_models_pytorch as smp
    build = _seeded(lambda: smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=3))
    return RealEntry(f"smp/{arch}-{encoder}", build, _batch(2, 3, 64, 64), (), min_groups)


def _yolo(cfg: str, min_groups: int) -> RealEntry:
    from ultralytics.nn.tasks import DetectionModel
    return RealEntry(f"ultralytics/{cfg}", _seeded(lambda: DetectionModel(cfg, verbose=False)),
                     _batch(1, 3, 64, 64), (), min_groups)


def _timm(name: str, min_groups: int, size: int = 64, max_macs: float = 0.5005, **kw) -> RealEntry:
    import timm
    build = _seeded(lambda: timm.create_model(name, pretrained=False, num_classes=10, **kw))
    return RealEntry(f"timm/{name}", build, _batch(2, 3, size, size), (), min_groups, max_macs=max_macs)


def real_zoo() -> list[RealEntry]:
    return [
        _detection("fasterrcnn_mobilenet_v3_large_fpn", ("rpn.head", "roi_heads.box_predictor"), 30),
        _detection("retinanet_resnet50_fpn", ("head",), 40),
        _detection("fcos_resnet50_fpn", ("head",), 40),
        _detection("ssdlite320_mobilenet_v3_large", ("head",), 30),
        _detection("maskrcnn_resnet50_fpn", ("rpn.head", "roi_heads.box_predictor", "roi_heads.mask_predictor"),
                   40, slow=True),
        _torchvision("fcn_resnet50", (2, 3, 64, 64), 30, aux_loss=False, weights_backbone=None),
        _torchvision("deeplabv3_mobilenet_v3_large", (2, 3, 64, 64), 30, aux_loss=False, weights_backbone=None),
        _torchvision("lraspp_mobilenet_v3_large", (2, 3, 64, 64), 25, weights_backbone=None),
        _torchvision("r3d_18", (1, 3, 4, 32, 32), 10),
        _smp("unet", "resnet18", 20),
        _smp("fpn", "resnet18", 15),
        _smp("deeplabv3plus", "resnet18", 20),
        _smp("unet", "efficientnet-b0", 40),
        _yolo("yolov8n.yaml", 40),
        _yolo("yolo11n.yaml", 45),
        # timm's LayerScale init of 1e-6 hides every block's branch from the comparison: 0.1 shows it
        _timm("convnext_atto", 12, ls_init_value=0.1),
        _timm("nf_resnet26", 5),
        _timm("ghostnetv2_100", 25),
        _timm("mobilenetv4_conv_small", 18),
        _timm("repghostnet_050", 25),
        _timm("hgnetv2_b0", 25),
        _timm("fastvit_t8", 10),
        _timm("efficientvit_b0", 12),
        _timm("edgenext_xx_small", 10),
        # attention matmuls, a tenth of LeViT's MACs, have no channels to cut (the target counts conv/linear)
        _timm("levit_128s", 12, size=224),
        _timm("vgg11_bn", 8, mlp_ratio=0.0625),   # its ConvMlp head at 1/16 width: 100M parameters fewer
    ]


def real_params(slow: bool = True) -> list:
    """The zoo as pytest params (without the slow entries unless ``slow``); one skip when the zoo
    extra is not installed."""
    try:
        entries = [e for e in real_zoo() if slow or not e.slow]
    except ImportError as exc:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"pip install -e '.[zoo]' ({exc.name})"))]
    return [pytest.param(e, id=e.name, marks=[pytest.mark.slow] if e.slow else []) for e in entries]


def outputs(model: nn.Module, x: tuple, probes: tuple[str, ...] = ()) -> list[torch.Tensor]:
    """The model's output tensors on ``x``, or those of the ``probes`` modules."""
    seen: list[torch.Tensor] = []
    hooks = [model.get_submodule(p).register_forward_hook(lambda m, a, out: seen.extend(flat_tensors(out)))
             for p in probes]
    try:
        with torch.no_grad():
            out = model(*x)
    finally:
        for h in hooks:
            h.remove()
    return seen if probes else flat_tensors(out)


def silence_and_cut(model: nn.Module, graph, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(copy with a third of every exact prunable group silenced, that copy with exactly those cut)."""
    rng = np.random.default_rng(seed)
    silenced, keep = copy.deepcopy(model), {}
    for g in (g for g in graph.prunable if g.exact):
        units = np.sort(rng.choice(g.size, size=max(1, g.size // 3), replace=False))
        secateur.silence(silenced, g, units)
        keep[g.index] = np.setdiff1d(np.arange(g.size), units)
    return silenced, secateur.apply(copy.deepcopy(silenced), graph, secateur.Plan(keep))

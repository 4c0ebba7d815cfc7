"""The explicit table of reference workloads: name → model class, loss, named configs.

No registration by import side effects: :data:`WORKLOADS` below is the whole registry.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from . import (
    colorization,
    context_ae,
    counting,
    deepcluster,
    denoising_ae,
    efficientdet,
    exemplar,
    jigsaw,
    multitask,
    relative_patch,
    rotnet,
    split_brain,
    yolov3,
)

__all__ = ["Workload", "WORKLOADS", "list_models", "model_config", "create_model", "create_loss", "get_workload"]

SIZES = ("tiny", "full")


@dataclass(frozen=True)
class Workload:
    """One registry entry.

    ``configs`` maps a size name (``tiny``/``full``) to the model's keyword arguments;
    ``make_loss(config, model, overrides)`` builds the matching loss.
    """

    name: str
    paper: str
    model_class: type[nn.Module]
    loss_class: type[nn.Module]
    configs: Mapping[str, Mapping]
    default_size: str = "full"
    make_loss: Callable | None = None
    family: str = "self-supervised"
    extra: Mapping = field(default_factory=dict)


def _plain_loss(cfg, model, overrides):
    return None


def _context_loss(cfg, model, overrides):
    return {"overlap": getattr(model, "overlap", cfg.get("overlap", 4))}


def _split_brain_loss(cfg, model, overrides):
    return {"l_bins": getattr(model, "l_bins", cfg.get("l_bins", 100))}


def _yolo_loss(cfg, model, overrides):
    if model is not None:
        return {"anchors": model.anchors, "num_classes": model.num_classes}
    size = cfg.get("image_size", 416)  # same rescaling of the COCO anchors as YOLOv3.__init__
    anchors = cfg.get("anchors") or [(w * size / 416, h * size / 416) for w, h in yolov3.COCO_ANCHORS]
    return {"anchors": anchors, "num_classes": cfg.get("num_classes", 80)}


def _effdet_loss(cfg, model, overrides):
    if model is not None:
        return {"num_classes": model.num_classes, "anchor_scale": model.anchor_scale}
    return {"num_classes": cfg.get("num_classes", 90), "anchor_scale": cfg.get("anchor_scale", 4.0)}


def _ssl(name, paper, module, model_class, loss_class, make_loss=_plain_loss):
    return Workload(name, paper, model_class, loss_class, module.CONFIGS, make_loss=make_loss)


def _effdet_entries():
    entries = []
    for phi, table in efficientdet.COMPOUND_SCALING.items():
        cfg = {**table, "num_classes": 90}
        entries.append(
            Workload(
                f"efficientdet-d{phi}", "Tan, Pang & Le, EfficientDet, CVPR 2020", efficientdet.EfficientDet, efficientdet.EfficientDetLoss,
                {"full": cfg, "tiny": efficientdet.TINY}, make_loss=_effdet_loss, family="detection",
            )
        )  # fmt: skip
    entries.append(
        Workload(
            "efficientdet-tiny-test", "Tan, Pang & Le, EfficientDet, CVPR 2020 (tiny test config)", efficientdet.EfficientDet,
            efficientdet.EfficientDetLoss, {"tiny": efficientdet.TINY}, default_size="tiny", make_loss=_effdet_loss, family="detection",
        )
    )  # fmt: skip
    return entries


_YOLO_PAPER = "Redmon & Farhadi, YOLOv3: An Incremental Improvement, arXiv 2018"

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        _ssl("rotnet", "Gidaris et al., Unsupervised Representation Learning by Predicting Image Rotations, ICLR 2018", rotnet, rotnet.RotNet, rotnet.RotNetLoss),
        _ssl("jigsaw", "Noroozi & Favaro, Solving Jigsaw Puzzles, ECCV 2016", jigsaw, jigsaw.JigsawNet, jigsaw.JigsawLoss),
        _ssl("relative-patch", "Doersch et al., Context Prediction, ICCV 2015", relative_patch, relative_patch.RelativePatchNet, relative_patch.RelativePatchLoss),
        _ssl("exemplar", "Dosovitskiy et al., Exemplar CNN, NIPS 2014", exemplar, exemplar.ExemplarCNN, exemplar.ExemplarLoss),
        _ssl("denoising-ae", "Vincent et al., Denoising Autoencoders, ICML 2008", denoising_ae, denoising_ae.DenoisingAutoencoder, denoising_ae.DenoisingLoss),
        _ssl("context-ae", "Pathak et al., Context Encoders, CVPR 2016", context_ae, context_ae.ContextEncoder, context_ae.ContextLoss, _context_loss),
        _ssl("colorization", "Zhang et al., Colorful Image Colorization, ECCV 2016", colorization, colorization.ColorizationNet, colorization.ColorizationLoss),
        _ssl("split-brain", "Zhang et al., Split-Brain Autoencoders, CVPR 2017", split_brain, split_brain.SplitBrainAutoencoder, split_brain.SplitBrainLoss, _split_brain_loss),
        _ssl("counting", "Noroozi et al., Representation Learning by Learning to Count, ICCV 2017", counting, counting.CountingNet, counting.CountingLoss),
        _ssl("multitask", "Doersch & Zisserman, Multi-task Self-Supervised Visual Learning, ICCV 2017", multitask, multitask.MultiTaskNet, multitask.MultiTaskLoss),
        _ssl("deepcluster", "Caron et al., Deep Clustering for Unsupervised Learning of Visual Features, ECCV 2018", deepcluster, deepcluster.DeepClusterNet, deepcluster.DeepClusterLoss),
        Workload("yolov3", _YOLO_PAPER, yolov3.YOLOv3, yolov3.YOLOv3Loss, yolov3.CONFIGS, make_loss=_yolo_loss, family="detection"),
        Workload("yolov3-tiny-test", _YOLO_PAPER + " (tiny test config)", yolov3.YOLOv3, yolov3.YOLOv3Loss, {"tiny": yolov3.CONFIGS["tiny"]},
                 default_size="tiny", make_loss=_yolo_loss, family="detection"),
        *_effdet_entries(),
    ]
}


def list_models(pattern: str | None = None) -> list[str]:
    """Registered workload names, optionally filtered by a shell-style ``pattern`` (``"efficientdet-*"``)."""
    names = list(WORKLOADS)
    return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def get_workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        close = [n for n in WORKLOADS if name.lower().replace("_", "-") in n]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(WORKLOADS)}") from None


def _accepted(cls) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def model_config(name: str, size: str | None = None, **overrides) -> dict:
    """The keyword arguments ``create_model(name, size, **overrides)`` passes to the model class."""
    w = get_workload(name)
    size = size or w.default_size
    if size not in w.configs:
        raise ValueError(f"{name!r} has no {size!r} config; available: {', '.join(w.configs)}")
    accepted = _accepted(w.model_class)
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError(f"{name}: unknown config key(s) {unknown}; {w.model_class.__name__} accepts {accepted}")
    cfg = dict(w.configs[size])
    if "size" in accepted:
        cfg["size"] = size
    cfg.update(overrides)
    return cfg


def create_model(name: str, size: str | None = None, **config) -> nn.Module:
    """Build workload ``name`` at a named ``size`` (``"tiny"`` or ``"full"``; the default is the
    name's own: full for the paper names, tiny for ``*-tiny-test``), with keyword overrides."""
    w = get_workload(name)
    return w.model_class(**model_config(name, size, **config))


def create_loss(name: str, size: str | None = None, model: nn.Module | None = None, **config) -> nn.Module:
    """The loss that goes with workload ``name``.

    Detection losses need the model's anchors and class count: pass ``model=`` (preferred) or the
    same ``size``/overrides used for :func:`create_model`. Extra keywords go to the loss class.
    """
    w = get_workload(name)
    loss_keys = _accepted(w.loss_class)
    model_keys = _accepted(w.model_class)
    loss_overrides = {k: v for k, v in config.items() if k in loss_keys}
    model_overrides = {k: v for k, v in config.items() if k not in loss_keys and k in model_keys}
    unknown = sorted(set(config) - set(loss_overrides) - set(model_overrides))
    if unknown:
        raise TypeError(f"{name}: unknown loss config key(s) {unknown}; {w.loss_class.__name__} accepts {loss_keys}")
    cfg = model_config(name, size, **model_overrides)
    kwargs = (w.make_loss(cfg, model, loss_overrides) if w.make_loss else None) or {}
    kwargs = {k: v for k, v in kwargs.items() if k in loss_keys}
    kwargs.update(loss_overrides)
    return w.loss_class(**kwargs)

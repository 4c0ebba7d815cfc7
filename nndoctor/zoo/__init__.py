"""Reference workloads, written from scratch in plain PyTorch.

A registry in the style of timm: every workload has a paper name, a model, the loss that goes
with it, and named configs from a tiny CPU test size to the paper's full size::

    from nndoctor import zoo

    zoo.list_models()                       # ['rotnet', 'jigsaw', ..., 'efficientdet-d7', ...]
    model = zoo.create_model("yolov3", size="tiny")
    loss_fn = zoo.create_loss("yolov3", model=model)

Each workload lives in its own module (``nndoctor.zoo.rotnet``, ``nndoctor.zoo.yolov3`` …) with
the helpers that turn plain images into its inputs and targets (``make_batch`` and friends);
:mod:`nndoctor.zoo.data` provides data that needs no download. This package imports nothing from
the rest of nndoctor.
"""

from ._batches import sample_batch
from ._registry import WORKLOADS, Workload, create_loss, create_model, get_workload, list_models, model_config

__all__ = ["list_models", "sample_batch", "create_model", "create_loss", "model_config", "get_workload", "Workload", "WORKLOADS"]

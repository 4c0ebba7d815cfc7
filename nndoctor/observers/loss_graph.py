"""The loss's autograd graph: what kind of loss this is and what fed it (a host-side
walk over ``grad_fn`` nodes on sampled steps; no device work).

Loss kinds (the observe side's vocabulary; the probes use the same strings):
``cross_entropy``, ``nll``, ``bce``, ``bce_logits``, ``mse``, ``l1``, ``smooth_l1``,
``huber``, ``kl_div``; plus ``soft_cross_entropy`` (a cross-entropy against probability
targets, found by its ``log_softmax``) and ``other``.
"""

from __future__ import annotations

from typing import Any

import torch

from .._observations import LossGraph, StepRecord
from .._tree import map_tensors
from ._base import Observer

# grad_fn node name -> loss kind
LOSS_KIND_BY_NODE = {
    "NllLossBackward0": "nll",
    "NllLoss2DBackward0": "nll",
    "NllLoss2dBackward0": "nll",
    "BinaryCrossEntropyBackward0": "bce",
    "BinaryCrossEntropyWithLogitsBackward0": "bce_logits",
    "MseLossBackward0": "mse",
    "L1LossBackward0": "l1",
    "SmoothL1LossBackward0": "smooth_l1",
    "HuberLossBackward0": "huber",
    "KlDivBackward0": "kl_div",
}
_PASS_THROUGH = (
    "ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "PermuteBackward0",
    "TransposeBackward0", "TransposeBackward1", "UnsqueezeBackward0", "SqueezeBackward0",
    "SqueezeBackward1", "SqueezeBackward2", "CloneBackward0", "ToCopyBackward0",
    "ExpandBackward0", "SliceBackward0", "SelectBackward0", "ContiguousBackward0",
)


def _first_input(node: Any) -> Any:
    for nxt, _ in getattr(node, "next_functions", ()):  # pragma: no branch
        if nxt is not None:
            return nxt
    return None


def _skip_views(node: Any) -> Any:
    for _ in range(16):
        if node is None or node.name() not in _PASS_THROUGH:
            return node
        node = _first_input(node)
    return node


def analyse_loss_graph(loss: torch.Tensor, max_nodes: int = 400) -> tuple[LossGraph, Any]:
    """What kind of loss this is and what fed it. Returns (LossGraph, nll_node or None)."""
    root = loss.grad_fn
    if root is None:
        return LossGraph(kind="other"), None
    anchors: list[tuple[str, Any]] = []
    seen: set[int] = set()
    stack = [root]
    names: list[str] = []
    reaches_param = False
    log_softmaxes: list[Any] = []
    while stack and len(seen) < max_nodes:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        name = node.name()
        if len(names) < 12:
            names.append(name)
        kind = LOSS_KIND_BY_NODE.get(name)
        if kind is not None:
            anchors.append((kind, node))
            continue
        if name == "LogSoftmaxBackward0":
            log_softmaxes.append(node)
            continue  # label smoothing's second term ends here
        if name.endswith("AccumulateGrad"):  # "torch::autograd::AccumulateGrad" in torch 2.13
            reaches_param = True
            continue
        for nxt, _ in node.next_functions:
            if nxt is not None:
                stack.append(nxt)
    if not anchors:
        if log_softmaxes:
            # -(target * log_softmax(x)).sum(): a cross-entropy with soft (probability)
            # targets, written by hand or F.cross_entropy with probability targets.
            feeders = [_skip_views(_first_input(n)) for n in log_softmaxes]
            fed = "softmax" if any(f is not None and f.name() == "SoftmaxBackward0" for f in feeders) else "log_softmax"
            return LossGraph(kind="soft_cross_entropy", fed_by=fed, nodes=names, multi_term=reaches_param), None
        return LossGraph(kind="other", nodes=names), None
    multi = len(anchors) > 1 or reaches_param
    kind, node = anchors[0]
    graph = LossGraph(kind=kind, multi_term=multi, nodes=names)
    try:
        graph.input_shape = tuple(int(d) for d in node._saved_self.shape)
    except Exception:  # not saved by this node type
        pass
    if kind == "nll":
        feeder = _skip_views(_first_input(node))
        fname = feeder.name() if feeder is not None else None
        if fname == "LogSoftmaxBackward0":
            upstream = _skip_views(_first_input(feeder))
            uname = upstream.name() if upstream is not None else None
            graph.kind = "cross_entropy"
            graph.fed_by = "softmax" if uname == "SoftmaxBackward0" else (
                "sigmoid" if uname == "SigmoidBackward0" else "log_softmax")
        elif fname == "LogBackward0":
            upstream = _skip_views(_first_input(feeder))
            graph.fed_by = "log_of_softmax" if upstream is not None and upstream.name() == "SoftmaxBackward0" else "log"
        else:
            graph.fed_by = "logits"
        try:
            logp = node._saved_self
            graph.n_classes = int(logp.shape[1]) if logp.dim() >= 2 else int(logp.shape[0])
            graph.reduction = {0: "none", 1: "mean", 2: "sum"}.get(int(node._saved_reduction))
        except Exception:  # saved tensors freed or layout unknown: leave unknown
            pass
        return graph, node
    if kind in ("bce_logits", "bce"):
        feeder = _skip_views(_first_input(node))
        fname = feeder.name() if feeder is not None else None
        graph.fed_by = "sigmoid" if fname == "SigmoidBackward0" else (
            "softmax" if fname == "SoftmaxBackward0" else "logits")
        return graph, node
    return graph, node


LOSS_KINDS = ("cross_entropy", "nll", "bce", "bce_logits", "mse", "l1", "smooth_l1", "huber", "kl_div",
              "soft_cross_entropy", "other")


def _clone(obj: Any) -> Any:
    return map_tensors(obj, lambda t: t.detach().clone())


class LossGraphObserver(Observer):
    """The first sampled backward's loss graph (``StepRecord.loss_graph``); keeps the
    loss node of a NLL/cross-entropy for the labels and the experiments' captured target."""

    name = "loss graph"
    feeds = ("loss-input-format", "chance-level-loss", "label-distribution")

    def before_backward(self, cur: StepRecord, loss: Any, first_after_update: bool) -> None:
        if loss is None or cur.loss_graph is not None:
            return
        if loss.grad_fn is None:
            if loss.requires_grad:  # torch.tensor(loss.item(), requires_grad=True): cut from the model
                cur.loss_graph = LossGraph(kind="other", leaf=True)
            return
        graph, nll = analyse_loss_graph(loss)
        cur.loss_graph = graph
        captured = self.rec.captured
        if nll is not None and "target" not in captured:
            try:
                captured["target"] = _clone(nll._saved_target)
                captured["loss_graph"] = graph
            except Exception:  # saved tensors already freed: nothing to capture
                pass
        if nll is not None and graph.kind in ("cross_entropy", "nll"):
            self.rec.scratch["nll_node"] = (nll, graph.n_classes)

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

from .._losskinds import GRAPH_NODE_KINDS, KINDS
from .._observations import LossGraph, LossValueRecord, StepRecord
from .._tree import map_tensors
from ._base import Observer

# grad_fn node name -> loss kind: the one table (nndoctor._losskinds)
LOSS_KIND_BY_NODE = GRAPH_NODE_KINDS
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
            graph.upstream = uname
            try:
                graph.norm_dim = int(feeder._saved_dim)
            except Exception:  # not saved by this torch version
                pass
            graph.kind = "cross_entropy"
            graph.fed_by = "softmax" if uname == "SoftmaxBackward0" else (
                "sigmoid" if uname == "SigmoidBackward0" else "log_softmax")
        elif fname == "LogBackward0":
            upstream = _skip_views(_first_input(feeder))
            graph.upstream = upstream.name() if upstream is not None else None
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
    # regression losses: F.mse_loss & co. broadcast input and target to one shape when they
    # differ ((N, 1) against (N,) becomes (N, N)): the input then arrives through an expand.
    feeder = _first_input(node)
    try:
        graph.target_shape = tuple(int(d) for d in node._saved_target.shape)
    except Exception:  # not saved by this node type
        pass
    source = _skip_views(feeder)
    if source is not None and source.name() in ("ReluBackward0", "SigmoidBackward0", "SoftplusBackward0"):
        graph.upstream = source.name()
    if feeder is not None and feeder.name() == "ExpandBackward0":
        try:
            before = tuple(int(d) for d in feeder._saved_self_sym_sizes)
        except Exception:  # sizes not saved: the shape is unknown
            before = None
        if before is not None and before != graph.input_shape:
            graph.broadcast_from = before
    return graph, node


# The observe side adds two kinds the graph tells apart: a cross-entropy against
# probability targets (found by its log_softmax) and anything else.
LOSS_KINDS = (*KINDS, "soft_cross_entropy", "other")


def _clone(obj: Any) -> Any:
    return map_tensors(obj, lambda t: t.detach().clone())


class LossGraphObserver(Observer):
    """The first sampled backward's loss graph (``StepRecord.loss_graph``); keeps the
    loss node of a NLL/cross-entropy for the labels and the experiments' captured target."""

    name = "loss graph"
    feeds = ("loss-input-format", "chance-level-loss", "label-distribution", "prediction-collapse")

    def before_backward(self, cur: StepRecord, loss: Any, first_after_update: bool) -> None:
        if loss is None or cur.loss_graph is not None:
            return
        if loss.grad_fn is None:
            if loss.requires_grad:  # torch.tensor(loss.item(), requires_grad=True): cut from the model
                cur.loss_graph = LossGraph(kind="other", leaf=True)
            return
        graph, nll = analyse_loss_graph(loss)
        cur.loss_graph = graph
        if nll is not None:
            self._values(cur, graph, nll)
        captured = self.rec.captured
        if nll is not None and "target" not in captured:
            try:
                captured["target"] = _clone(nll._saved_target)
                captured["loss_graph"] = graph
            except Exception:  # saved tensors already freed: nothing to capture
                pass
        if nll is not None and graph.kind in ("cross_entropy", "nll"):
            self.rec.scratch["nll_node"] = (nll, graph.n_classes)

    # -- the loss input judged by its values (sampled steps; one vector to the host) ----
    def _values(self, cur: StepRecord, graph: LossGraph, node: Any) -> None:
        try:
            pred = node._saved_self.detach()
            target = node._saved_target.detach()
        except Exception:  # saved tensors freed, or a node that saves neither
            return
        if pred.numel() == 0 or pred.dim() == 0:
            return
        kind = graph.kind
        with torch.no_grad():
            if kind in ("cross_entropy", "nll"):
                built = self._classes(node, pred, target)
            elif kind in ("bce", "bce_logits"):
                built = self._binary(node, pred, target, logits=kind == "bce_logits")
            elif kind in ("mse", "smooth_l1", "huber", "l1"):
                built = self._regression(pred, target, graph)
            else:
                return
        if built is None:
            return
        vec, make = built

        def sink(v: list[float]) -> None:
            cur.loss_values = make([None if x != x else x for x in v])

        self.add(vec, sink)

    @staticmethod
    def _classes(node: Any, logp: torch.Tensor, target: torch.Tensor):
        if logp.dim() < 2:
            return None
        n, k = int(logp.shape[0]), int(logp.shape[1])
        lp = logp.float()
        nan = torch.tensor(float("nan"), device=lp.device)
        row = torch.logsumexp(lp, dim=1).abs().mean()
        col = torch.logsumexp(lp, dim=0).abs().mean() if n > 1 else nan
        pred = lp.argmax(dim=1).reshape(-1)
        t = target.reshape(-1).long()
        try:
            ignore = int(node._saved_ignore_index)
            if ignore >= 2**63:
                ignore -= 2**64
        except Exception:  # not saved: every target counts
            ignore = None
        valid = (t >= 0) & (t < k)
        if ignore is not None:
            valid &= t != ignore
        if pred.numel() != t.numel():
            return None
        ones = valid.double()
        pc = torch.zeros(k, device=lp.device, dtype=torch.float64).scatter_add_(0, pred, ones)
        tc = torch.zeros(k, device=lp.device, dtype=torch.float64).scatter_add_(0, torch.where(valid, t, 0), ones)
        m = ones.sum().clamp_min(1)
        # the values fed to log_softmax, when the op before it kept its output (a ReLU does)
        logits = None
        feeder = _skip_views(_first_input(node))
        if feeder is not None and feeder.name() == "LogSoftmaxBackward0":
            up = _skip_views(_first_input(feeder))
            saved = getattr(up, "_saved_result", None) if up is not None else None
            if isinstance(saved, torch.Tensor) and saved.shape == logp.shape:
                logits = saved.detach().float()
        lmin = logits.min() if logits is not None else nan
        lzero = (logits == 0).float().mean() if logits is not None else nan
        vec = torch.stack([
            row.double(), col.double(), pc.max() / m, pc.argmax().double(), tc.max() / m, tc.argmax().double(),
            (pc > 0).sum().double(), (tc > 0).sum().double(), lmin.double(), lzero.double(), m,
        ])

        def make(v: list) -> LossValueRecord:
            return LossValueRecord(
                kind="classes", n=n, n_outputs=k, row_norm_error=v[0], col_norm_error=v[1],
                predicted_share=v[2], predicted_class=int(v[3]), target_share=v[4], target_class=int(v[5]),
                predicted_classes=int(v[6]), target_classes=int(v[7]), logits_min=v[8], logits_zero_fraction=v[9],
            )

        return vec, make

    @staticmethod
    def _binary(node: Any, pred: torch.Tensor, target: torch.Tensor, logits: bool):
        if pred.shape != target.shape:
            return None
        n = int(pred.shape[0]) if pred.dim() else 1
        k = int(pred[0].numel()) if pred.dim() else 1
        p = pred.float()
        pos = (p > 0) if logits else (p > 0.5)
        tpos = target.float() > 0.5
        weighted = False
        for attr in ("_saved_pos_weight", "_saved_weight"):
            w = getattr(node, attr, None)
            weighted = weighted or isinstance(w, torch.Tensor)
        pr, tr = pos.double().mean(), tpos.double().mean()
        vec = torch.stack([pr, tr])

        def make(v: list) -> LossValueRecord:
            prate, trate = v
            return LossValueRecord(
                kind="binary", n=n, n_outputs=k, predicted_positive_rate=prate, positive_rate=trate,
                predicted_share=max(prate, 1 - prate), predicted_class=int(prate >= 0.5),
                target_share=max(trate, 1 - trate), target_class=int(trate >= 0.5), pos_weight=weighted,
            )

        return vec, make

    @staticmethod
    def _regression(pred: torch.Tensor, target: torch.Tensor, graph: LossGraph):
        if pred.dim() == 0 or pred.shape[0] < 2:
            return None
        n = int(pred.shape[0])
        p = pred.float().reshape(n, -1)
        t = target.float()
        if t.shape != pred.shape:
            return None
        t = t.reshape(n, -1)
        if graph.broadcast_from is not None:
            # the broadcast copies the one output along the new dim: judge the real output
            p = p[:, :1]
        k = int(p.shape[1])
        out_std = p.std(dim=0, unbiased=False).mean()
        tgt_std = t.std(dim=0, unbiased=False).mean()
        whole = (t == t.round()).all().double()
        tmin, tmax = torch.aminmax(t)
        bins = t.round().clamp(-1, 64).long() + 1
        distinct = (torch.zeros(66, device=t.device, dtype=torch.float64)
                    .scatter_add_(0, bins.reshape(-1), torch.ones(bins.numel(), device=t.device, dtype=torch.float64))
                    > 0).sum().double()
        vec = torch.stack([out_std.double(), tgt_std.double(), whole, tmin.double(), tmax.double(), distinct,
                           (t < 0).double().mean(), (p == 0).double().mean(), p.min().double()])

        def make(v: list) -> LossValueRecord:
            return LossValueRecord(
                kind="regression", n=n, n_outputs=k, output_std=v[0], target_std=v[1],
                target_integer=bool(v[2]), target_min=v[3], target_max=v[4], target_classes=int(v[5]),
                target_negative_fraction=v[6], output_zero_fraction=v[7], output_min=v[8],
            )

        return vec, make

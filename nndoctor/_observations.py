"""Plain data that the observers produce and the checks read (no torch here).

Observers (``nndoctor.observers``) reduce tensors on the device and, at sync points,
turn them into these records. Everything is host-side Python numbers and strings:
module *paths*, never modules, so holding an ``Observations`` keeps no model alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _probe_records
from ._probe_records import *  # noqa: F401,F403  (re-export: one place to import records from)

__all__ = [
    "ModuleMeta",
    "ParamMeta",
    "ActivationRecord",
    "InputRecord",
    "LabelRecord",
    "LossGraph",
    "LossValueRecord",
    "StepRecord",
    "NonFiniteEvent",
    "Observations",
    # the experiments' records (nndoctor._probe_records), re-exported with the others
    *_probe_records.__all__,
]


@dataclass
class ModuleMeta:
    path: str  # "" is the root
    class_name: str
    category: str  # relu | sigmoid | tanh | batchnorm | norm | linear | conv | embedding | dropout | activation | loss | container | other
    is_leaf: bool
    n_params: int
    stock: bool  # a module class that torch itself ships
    training: bool = True


@dataclass
class ParamMeta:
    name: str  # "encoder.0.weight"
    module: str  # "encoder.0"
    shape: tuple[int, ...]
    numel: int
    requires_grad: bool
    in_optimizer: bool | None  # None: no optimizer known
    category: str  # category of the owning module
    role: str  # weight | bias | other
    fan_in: int | None = None
    init_std: float | None = None
    init_mean: float | None = None
    init_all_equal: bool | None = None


@dataclass
class ActivationRecord:
    """One module call's output (and input) statistics on a sampled step."""

    path: str
    call: int  # order of the call within the step's forward
    mean: float
    std: float
    numel: int
    out_nonfinite: bool
    in_nonfinite: bool
    batch: int | None = None
    dead_fraction: float | None = None  # ReLU: share of elements == 0
    saturated_fraction: float | None = None  # sigmoid/tanh: share of elements near the rails
    params_nonfinite: bool = False
    output_index: str | None = None  # for tuple/dict outputs: which element went bad first
    input_calls: list[int] = field(default_factory=list)  # calls (this step) whose output is an input here
    spatial: int | None = None  # product of the dims after (batch, channels), for 3-D+ outputs


@dataclass
class InputRecord:
    dtype: str
    shape: tuple[int, ...]
    mean: float
    std: float
    min: float
    max: float
    zero_fraction: float
    fingerprint: tuple[float, float]
    is_float: bool = True
    # The model's input is the very tensor object of the previous observed step (kept by
    # weak reference; a data pointer alone can be reused by the allocator). None: unknown.
    same_tensor: bool | None = None


@dataclass
class LabelRecord:
    n: int
    counts: dict[int, int]
    min: int
    max: int
    fingerprint: tuple[float, float]
    ignore_index: int | None = None


@dataclass
class LossGraph:
    """What the loss's autograd graph says about how the loss was computed."""

    kind: str  # cross_entropy | nll | bce | bce_logits | mse | l1 | smooth_l1 | huber | kl_div | soft_cross_entropy | other
    fed_by: str | None = None  # softmax | log_softmax | sigmoid | logits | None
    n_classes: int | None = None
    multi_term: bool = False
    reduction: str | None = None
    nodes: list[str] = field(default_factory=list)
    input_shape: tuple[int, ...] | None = None  # shape of the tensor the library loss was fed
    leaf: bool = False  # the loss has no grad_fn but requires grad: re-wrapped, cut from the model
    norm_dim: int | None = None  # the dim log_softmax normalised over (as passed, may be negative)
    upstream: str | None = None  # grad_fn name of the op right before log_softmax / the loss input
    broadcast_from: tuple[int, ...] | None = None  # input shape before the loss broadcast it (MSE...)
    target_shape: tuple[int, ...] | None = None


@dataclass
class LossValueRecord:
    """What the loss was fed, by value, on one sampled step (device reductions; NaN/None
    where a quantity does not apply to the loss kind)."""

    kind: str
    n: int  # samples (rows) in the batch
    n_outputs: int  # outputs per sample (classes, or regression outputs)
    # classification: predictions (argmax, or the sign of a binary logit) vs targets
    predicted_share: float | None = None  # share of the batch predicted as the most common class
    predicted_class: int | None = None
    target_share: float | None = None  # share of the targets in their most common class
    target_class: int | None = None
    predicted_classes: int | None = None  # distinct predicted classes
    target_classes: int | None = None  # distinct target values (integer targets, up to 64)
    positive_rate: float | None = None  # binary: share of targets > 0.5
    predicted_positive_rate: float | None = None
    pos_weight: bool = False  # BCEWithLogitsLoss got a pos_weight / weight
    # log-probabilities: |logsumexp| over the class dim and over the batch dim (0 = normalised)
    row_norm_error: float | None = None
    col_norm_error: float | None = None
    # the values right before log_softmax (a ReLU's output): minimum, share of exact zeros
    logits_min: float | None = None
    logits_zero_fraction: float | None = None
    # regression: per-output std across the batch, of the predictions and of the targets
    output_std: float | None = None
    target_std: float | None = None
    target_integer: bool | None = None  # every target is a whole number
    target_min: float | None = None
    target_max: float | None = None
    # regression: share of targets below 0, and of predictions exactly 0 (a final ReLU)
    target_negative_fraction: float | None = None
    output_zero_fraction: float | None = None
    output_min: float | None = None


@dataclass
class StepRecord:
    step: int
    sampled: bool
    loss: float | None = None
    # how many backpropagated losses ``loss`` adds up (micro-batches of one optimizer step)
    loss_terms: int = 0
    # at the optimizer's step, a forward (with grad) had run since the last backward:
    # step() called before loss.backward()
    step_before_backward: bool | None = None
    training: bool | None = None
    backward_calls: int = 0
    # global gradient L2 norm, and the parameters whose gradient was non-finite (every step)
    grad_total: float | None = None
    grad_nonfinite: list[str] = field(default_factory=list)
    # gradient L2 norm per parameter name (sampled steps only, to keep long runs small)
    grad_norms: dict[str, float] = field(default_factory=dict)
    grads_missing: list[str] = field(default_factory=list)  # requires_grad but grad is None (sampled steps)
    # gradient L2 norm per parameter when the backward finished (sampled optimizer steps;
    # compared with grad_norms at the optimizer's pre-step: gradients wiped in between)
    grad_norms_at_backward: dict[str, float] = field(default_factory=dict)
    stale_grad_norm: float | None = None  # grads already present at the first backward after an update
    activations: list[ActivationRecord] = field(default_factory=list)
    update_norms: dict[str, float] = field(default_factory=dict)
    weight_norms: dict[str, float] = field(default_factory=dict)
    input: InputRecord | None = None
    labels: LabelRecord | None = None
    loss_graph: LossGraph | None = None
    loss_values: LossValueRecord | None = None  # what the loss was fed, by value (sampled steps)
    output_shape: tuple[int, ...] | None = None
    bn_batch_one: list[str] = field(default_factory=list)
    lr: float | None = None
    # hand-written updates: weight norms and gradient norm at the first backward (sampled)
    weight_fingerprint: list[float] | None = None
    grad_before_backward: float | None = None
    # AMP: the GradScaler found inf/NaN gradients and skipped the optimizer step
    skipped: bool = False
    loss_scale: float | None = None


@dataclass
class NonFiniteEvent:
    direction: str  # forward | backward | loss
    step: int
    where: str | None  # module path or parameter name
    kind: str  # nan | inf | nan/inf
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Observations:
    model_class: str = ""
    n_parameters: int = 0
    n_trainable: int = 0
    modules: dict[str, ModuleMeta] = field(default_factory=dict)
    params: dict[str, ParamMeta] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    forward_order: list[str] = field(default_factory=list)  # module paths in first-call order
    called_modules: set[str] = field(default_factory=set)
    unregistered_modules: list[dict[str, Any]] = field(default_factory=list)
    optimizers: list[dict[str, Any]] = field(default_factory=list)
    # ReLU path -> {"units": int, "dead": int, "samples": int}
    relu_units: dict[str, dict[str, int]] = field(default_factory=dict)
    nonfinite: list[NonFiniteEvent] = field(default_factory=list)
    # Parameter name -> did it ever change between the first and last observed step
    params_changed: dict[str, bool] = field(default_factory=dict)
    has_optimizer: bool = False
    # optimizers that stepped while watching but hold none of the model's parameters
    # (built over another instance): described once each
    other_optimizers: list[dict[str, Any]] = field(default_factory=list)
    updates_seen: int = 0
    sampled_steps: int = 0
    notes: list[str] = field(default_factory=list)
    # Observer units that failed during the watch: unit name -> {"error": repr of the
    # exception, "where": the event, "checks": ids of the checks that read its data}.
    observer_failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    # One dict per torch DataLoader iterated while watching, or alive when the watch
    # ended: {"dataset_len": int | None, "batch_size": int | None, "iterations": int}.
    # None: not observed (an older observer); []: no DataLoader in play.
    data_loaders: list[dict[str, Any]] | None = None
    experiments: dict[str, Any] = field(default_factory=dict)
    # The custom autograd.Functions watch() saw, each verified on its first call (see
    # nndoctor.observers.custom_functions): one plain dict per Function class. None: not
    # verified (no watch, or report() not built yet); []: none was called.
    custom_functions: list[dict[str, Any]] | None = None
    # Check id -> {threshold name: value} the checks judged with (a user's overrides
    # included), so reporters draw the lines the checks actually used.
    check_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def losses(self) -> list[tuple[int, float]]:
        return [(s.step, s.loss) for s in self.steps if s.loss is not None]

    @property
    def sampled(self) -> list[StepRecord]:
        return [s for s in self.steps if s.sampled]

    def module_of(self, param_name: str) -> str:
        meta = self.params.get(param_name)
        return meta.module if meta else param_name.rpartition(".")[0]

    def first_loss_graph(self) -> LossGraph | None:
        for s in self.steps:
            if s.loss_graph is not None:
                return s.loss_graph
        return None

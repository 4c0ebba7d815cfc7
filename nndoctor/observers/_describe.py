"""The model's description, taken once when a watch starts: module categories (the only
place that looks at torch classes), parameter roles, fan-in, optimizer settings; and what
the watch finds around the model: optimizers discovered while it runs (one may be
stepping when it starts), the data loaders that fed it."""

from __future__ import annotations

import gc
import os
import sys
from typing import Any, Callable

import torch
from torch import nn

from .._observations import ModuleMeta, Observations, ParamMeta

_RELU = (nn.ReLU, nn.ReLU6)
_NORM = tuple(c for c in (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, getattr(nn, "RMSNorm", None))
              if c is not None)  # nn.RMSNorm: torch >= 2.4
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_ACT = (
    nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.PReLU, nn.SELU, nn.CELU, nn.Mish,
    nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softmax, nn.LogSoftmax,
)
_POOL = (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
         nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
         nn.modules.pooling._LPPoolNd)


def categorize(module: nn.Module) -> str:
    if isinstance(module, _RELU):
        return "relu"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, nn.Tanh):
        return "tanh"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(module, (*_NORM, nn.modules.instancenorm._InstanceNorm)):
        return "norm"
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return "linear"
    if isinstance(module, _CONV):
        return "conv"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return "dropout"
    if isinstance(module, _ACT):
        return "activation"
    if isinstance(module, nn.modules.loss._Loss):
        return "loss"
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return "recurrent"
    if isinstance(module, _POOL):
        return "pool"
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return "container"
    if next(module.children(), None) is not None:
        return "container"
    return "other"


def is_stock(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.")


def fan_in(param: torch.Tensor) -> int | None:
    if param.dim() < 2:
        return None
    receptive = 1
    for s in param.shape[2:]:
        receptive *= int(s)
    return int(param.shape[1]) * receptive


def describe_optimizer(opt: torch.optim.Optimizer) -> dict[str, Any]:
    groups = []
    for g in opt.param_groups:
        hp = {k: v for k, v in g.items()
              if k != "params" and (isinstance(v, (int, float, bool, str)) or v is None)}
        hp["n_params"] = len(g["params"])
        groups.append(hp)
    return {"class": type(opt).__name__, "groups": groups}


def describe_modules(model: nn.Module) -> tuple[dict[str, ModuleMeta], dict[int, str]]:
    """Module metadata by path, and module id -> path."""
    metas: dict[str, ModuleMeta] = {}
    ids: dict[int, str] = {}
    for path, module in model.named_modules():
        ids[id(module)] = path
        metas[path] = ModuleMeta(
            path=path,
            class_name=type(module).__name__,
            category=categorize(module),
            is_leaf=next(module.children(), None) is None,
            n_params=sum(p.numel() for p in module.parameters(recurse=False)),
            stock=is_stock(module),
            training=module.training,
        )
    return metas, ids


def describe_param(name: str, p: torch.Tensor, modules: dict[str, ModuleMeta],
                   in_optimizer: bool | None) -> ParamMeta:
    module_path, _, leaf = name.rpartition(".")
    cat = modules[module_path].category if module_path in modules else "other"
    role = "weight" if leaf == "weight" and p.dim() >= 2 else ("bias" if leaf == "bias" else "other")
    return ParamMeta(
        name=name, module=module_path, shape=tuple(p.shape), numel=p.numel(),
        requires_grad=p.requires_grad, in_optimizer=in_optimizer,
        category=cat, role=role, fan_in=fan_in(p),
    )


def init_weight_stats(weights: list[tuple[ParamMeta, torch.Tensor]]) -> torch.Tensor:
    """[std, mean, max - min] per weight, stacked (device side; resolved at a sync)."""
    with torch.no_grad():
        stats = []
        for _, p in weights:
            var, mean = torch.var_mean(p.detach().float(), correction=0)
            spread = p.detach().amax() - p.detach().amin()
            stats.append(torch.stack([var.sqrt(), mean, spread.float()]))
        return torch.stack(stats)


def describe_watch(obs: Observations, model: nn.Module, optimizers: list[torch.optim.Optimizer],
                   pending: Any) -> tuple[list[tuple[str, torch.Tensor]], dict[int, str], dict[int, str]]:
    """Fill in ``obs``'s description of the model and its optimizers; queue the initial
    weight statistics on ``pending`` (resolved at the first sync). Returns the parameters
    by name, and the names of parameters and modules by ``id``."""
    obs.model_class = type(model).__name__
    in_opt: set[int] | None = None
    if optimizers:
        in_opt = {id(p) for o in optimizers for g in o.param_groups for p in g["params"]}
        obs.has_optimizer = True
        obs.optimizers = [describe_optimizer(o) for o in optimizers]
    obs.modules, module_ids = describe_modules(model)
    params: list[tuple[str, torch.Tensor]] = []
    param_ids: dict[int, str] = {}
    weights: list[tuple[ParamMeta, torch.Tensor]] = []
    for name, p in model.named_parameters():
        meta = describe_param(name, p, obs.modules, None if in_opt is None else id(p) in in_opt)
        obs.params[name] = meta
        param_ids[id(p)] = name
        params.append((name, p))
        if (meta.role == "weight" and meta.category in ("linear", "conv") and p.is_floating_point()
                and p.numel() > 1):
            weights.append((meta, p))
    obs.n_parameters = sum(m.numel for m in obs.params.values())
    obs.n_trainable = sum(m.numel for m in obs.params.values() if m.requires_grad)
    if weights:
        metas = [m for m, _ in weights]

        def sink(vals: list[float]) -> None:
            for i, m in enumerate(metas):
                m.init_std, m.init_mean, spread = vals[3 * i : 3 * i + 3]
                m.init_all_equal = spread == 0.0

        pending.add(init_weight_stats(weights), sink)
    return params, param_ids, module_ids


def adopt_optimizer(obs: Observations, params: list[tuple[str, torch.Tensor]], opt: torch.optim.Optimizer) -> None:
    """An optimizer over the model's parameters found while watching joins the description."""
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    for name, p in params:
        meta = obs.params[name]
        meta.in_optimizer = bool(meta.in_optimizer) or id(p) in ids
    obs.has_optimizer = True
    obs.optimizers.append(describe_optimizer(opt))


_OPTIMIZER_FILE = os.path.join("optim", "optimizer.py")  # where Optimizer.step's hook-calling wrapper lives


def stepping_optimizer(owns: Callable[[torch.optim.Optimizer], bool]) -> torch.optim.Optimizer | None:
    """The optimizer (over the model: ``owns``) whose ``step()`` is running now, if a watch
    starts inside one: the CLI runner enters at the model's first forward, which for a
    closure optimizer (LBFGS) is inside the first step, after its pre-step hook ran."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "wrapper" and frame.f_code.co_filename.endswith(_OPTIMIZER_FILE):
            opt = frame.f_locals.get("self")
            if isinstance(opt, torch.optim.Optimizer) and owns(opt):
                return opt
        frame = frame.f_back
    return None


def describe_data_loaders(iterated: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The loaders iterated while watching (``iterated``: id -> {"loader": weakref,
    "iterations": n}), plus the ones alive now: a loader whose iterator was taken before
    the watch (``x, y = next(iter(loader))`` above the loop, or the CLI runner entering
    at the first forward) still counts."""
    from torch.utils.data import DataLoader

    found: dict[int, tuple[Any, int]] = {}
    for key, seen in iterated.items():
        loader = seen["loader"]()
        if loader is not None:
            found[key] = (loader, seen["iterations"])
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance reads `__class__`, which some module
        # proxies (deprecated torch aliases) answer with a warning.
        if issubclass(type(obj), DataLoader) and id(obj) not in found:
            found[id(obj)] = (obj, 0)
    out = []
    for loader, iterations in found.values():
        try:
            dataset_len = len(loader.dataset)
        except Exception:  # an IterableDataset without __len__
            dataset_len = None
        out.append({"dataset_len": dataset_len, "batch_size": loader.batch_size, "iterations": iterations})
    return out

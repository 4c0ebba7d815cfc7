"""The model's description, taken once when a watch starts: module categories (the only
place that looks at torch classes), parameter roles, fan-in, optimizer settings."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._observations import ModuleMeta, ParamMeta

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

"""AdamW parameter groups (no decay, layer-wise lr decay) and the cosine-with-warmup schedule.

As in BEiT: no weight decay on norms, biases, layer-scale gammas, the cls and
mask tokens, position embeddings and relative position bias tables. With
layer-wise decay, layer ``i`` of ``L`` trains at ``decay ** (L + 1 - id)``
times the base rate, where the embeddings have id 0, transformer layer ``i``
id ``i + 1`` and everything above (shared bias, pooling norm, heads) ``L + 1``.
"""
from __future__ import annotations

import functools
import math
import re

import torch

NO_DECAY_NAMES = ("cls_token", "mask_token", "position_embeddings", "relative_position_bias_table")


def layer_id(name: str, num_layers: int) -> int:
    """Depth of parameter ``name`` for layer-wise lr decay (0 = embeddings, ``num_layers + 1`` = top)."""
    if re.search(r"(^|\.)embeddings\.", name):
        return 0
    match = re.search(r"(^|\.)layers\.(\d+)\.", name)
    return int(match.group(2)) + 1 if match else num_layers + 1


def skips_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Whether ``param`` is exempt from weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or any(key in name for key in NO_DECAY_NAMES)


def param_groups(model: torch.nn.Module, *, lr: float, weight_decay: float, num_layers: int,
                 layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups keyed by (lr scale, weight decay); one pair of groups when ``layer_decay == 1``."""
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = layer_decay ** (num_layers + 1 - layer_id(name, num_layers))
        decay = 0.0 if skips_weight_decay(name, param) else weight_decay
        group = groups.setdefault((scale, decay), {"params": [], "names": [], "lr": lr * scale,
                                                   "lr_scale": scale, "weight_decay": decay})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def cosine_factor(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup, then cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, *, lr: float, min_lr: float, weight_decay: float,
                    betas: tuple[float, float], total_steps: int, warmup_steps: int, num_layers: int,
                    layer_decay: float = 1.0,
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`param_groups` and a per-step cosine schedule (``scheduler.step()`` after each update).

    Build it after the model is on its device: AdamW then uses its fused
    kernel on CPU and CUDA (several times faster than the per-tensor loop).
    """
    groups = param_groups(model, lr=lr, weight_decay=weight_decay, num_layers=num_layers, layer_decay=layer_decay)
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    factor = functools.partial(cosine_factor, total_steps=total_steps, warmup_steps=warmup_steps,
                               min_ratio=min_lr / lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""AdamW with V3's settings, learning-rate schedules and the batch-size ramp."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig, TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (and the stacked expert tensors); no decay on norms, biases or 1-D tensors."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or name.endswith(".bias") or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if device.type == "cuda":
        kw["fused"] = True
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), **kw)
    if cfg.moments_dtype == "bfloat16":
        _bf16_moments(opt)
    return opt


def _bf16_moments(opt: torch.optim.Optimizer) -> None:
    """V3 report §3.3: AdamW moments in bf16. Pre-create the state so AdamW keeps their dtype."""
    for g in opt.param_groups:
        for p in g["params"]:
            opt.state[p] = {"step": torch.tensor(0.0, dtype=torch.float32, device=p.device) if opt.defaults.get("fused") else torch.tensor(0.0),
                            "exp_avg": torch.zeros_like(p, dtype=torch.bfloat16),
                            "exp_avg_sq": torch.zeros_like(p, dtype=torch.bfloat16)}


def lr_at(step: int, cfg: OptimConfig, total: int) -> float:
    """Linear warmup, then cosine to lr·min_lr_ratio, or warmup-stable-decay (linear in the last decay_frac)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    decay_start = int(total * (1 - cfg.decay_frac))
    if step < decay_start:
        return cfg.lr
    t = (step - decay_start) / max(1, total - decay_start)
    return cfg.lr - (cfg.lr - floor) * min(t, 1.0)


def micro_batches_at(step: int, cfg: TrainConfig) -> int:
    """Batch-size ramp (V3 ramps 3072 -> 15360 sequences): micro-batches per optimizer step."""
    if cfg.batch_ramp_steps <= 0 or step >= cfg.batch_ramp_steps:
        return cfg.grad_accum
    t = step / cfg.batch_ramp_steps
    return max(1, round(cfg.batch_ramp_start + t * (cfg.grad_accum - cfg.batch_ramp_start)))

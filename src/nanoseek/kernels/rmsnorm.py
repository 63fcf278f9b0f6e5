"""RMSNorm y = w * cast_x(x / sqrt(mean(x²) + eps)): reference, fused Triton path, dispatch.

The reference is the model's RMSNorm math, HF rounding: normalise in fp32, cast back to the
input dtype, then multiply by the weight (output dtype = promote(x, w)). It is the CPU path
and the oracle for triton_rmsnorm.py.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .dispatch import use_fused

MAX_N = 65536  # one row per program: longer rows keep the reference path


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., N), weight (N,) -> (..., N). Plain PyTorch, differentiable by autograd."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


class RMSNormFn(torch.autograd.Function):
    """Fused forward (one pass, saves rstd (M,) fp32) and backward (dx and dw in one pass)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        from .triton_rmsnorm import rms_norm_fwd
        y, rstd = rms_norm_fwd(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        from .triton_rmsnorm import rms_norm_bwd
        x, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_bwd(dy, x, weight, rstd)
        return dx, dw, None


def rms_norm_fused(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return RMSNormFn.apply(x, weight, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Fused on CUDA (see dispatch.use_fused), else the reference."""
    if use_fused(x, weight) and weight.shape == x.shape[-1:] and x.shape[-1] <= MAX_N:
        return rms_norm_fused(x, weight, eps)
    return rms_norm_ref(x, weight, eps)

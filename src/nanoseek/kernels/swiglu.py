"""SwiGLU y = silu(g) * u: reference, fused Triton path (fwd + bwd), dispatch.

Two forms: `swiglu(g, u)` (dense MLP: separate gate / up projections) and `swiglu_cat(h)`
with h = [g | u] along the last dim (MoE experts: one (T, 2I) grouped GEMM output).
The fused backward recomputes silu(g) instead of saving it, and for `swiglu_cat` writes
dg and du straight into the two halves of one dh (no cat).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
import torch.nn.functional as F

from .dispatch import rows2d, use_fused


def swiglu_ref(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """g, u (..., H) -> (..., H). Plain PyTorch."""
    return F.silu(g) * u


def swiglu_cat_ref(h: torch.Tensor) -> torch.Tensor:
    """h (..., 2H) = [gate | up] -> (..., H). Plain PyTorch."""
    g, u = h.chunk(2, dim=-1)
    return F.silu(g) * u


class SwiGLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        from .triton_swiglu import swiglu_fwd
        ctx.save_for_backward(g, u)
        return swiglu_fwd(rows2d(g), rows2d(u)).view(g.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        from .triton_swiglu import swiglu_bwd
        g, u = ctx.saved_tensors
        g2, u2 = rows2d(g), rows2d(u)
        dg = torch.empty(g2.shape, dtype=g.dtype, device=g.device)  # (M, H)
        du = torch.empty(u2.shape, dtype=u.dtype, device=u.device)
        swiglu_bwd(g2, u2, rows2d(dy), dg, du)
        return dg.view(g.shape), du.view(u.shape)


class SwiGLUCatFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        from .triton_swiglu import swiglu_fwd
        ctx.save_for_backward(h)
        h2 = rows2d(h)  # (M, 2H)
        H = h2.shape[1] // 2
        return swiglu_fwd(h2[:, :H], h2[:, H:]).view(*h.shape[:-1], H)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        from .triton_swiglu import swiglu_bwd
        (h,) = ctx.saved_tensors
        h2 = rows2d(h)  # (M, 2H)
        H = h2.shape[1] // 2
        dh = torch.empty((h2.shape[0], 2 * H), dtype=h.dtype, device=h.device)
        swiglu_bwd(h2[:, :H], h2[:, H:], rows2d(dy), dh[:, :H], dh[:, H:])
        return dh.view(h.shape)


def swiglu_fused(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return SwiGLUFn.apply(g, u)


def swiglu_cat_fused(h: torch.Tensor) -> torch.Tensor:
    return SwiGLUCatFn.apply(h)


def swiglu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Fused on CUDA (see dispatch.use_fused), else the reference."""
    if use_fused(g, u) and g.shape == u.shape and g.dtype == u.dtype:
        return swiglu_fused(g, u)
    return swiglu_ref(g, u)


def swiglu_cat(h: torch.Tensor) -> torch.Tensor:
    """Fused on CUDA (see dispatch.use_fused), else the reference."""
    if use_fused(h) and h.shape[-1] % 2 == 0:
        return swiglu_cat_fused(h)
    return swiglu_cat_ref(h)

"""MoE permute / unpermute: reference, fused Triton path (fwd + bwd), dispatch.

The T·K (token, slot) pairs are sorted by expert (`order`, (T*K,)); inv (T, K) is the inverse:
inv[t, k] = the row of pair (t, k) in expert order. Around the grouped expert GEMMs:
  permute:   xs (T*K, d) = x[order // K]             (eager: div + index gather; bwd index_put)
  unpermute: out (T, d)  = Σ_k fp32(ys[inv[t, k]]) * w[t, k], cast to `dtype`
             (eager: index gather, cast, mul, sum, cast; bwd: mul, cast, index_put, mul, sum)
The fused kernels (triton_moe.py) own tokens and visit their K rows through inv: one pass each
way, deterministic (no atomics). `w` (T, K) is the router's fp32 combine weight and gets a grad.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .dispatch import use_fused


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """order (N,) a permutation -> inv (N,) with inv[order] = arange(N)."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return inv


def moe_permute_ref(x: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
    """x (T, d), order (T*K,) -> xs (T*K, d), rows grouped by expert. Plain PyTorch."""
    return x[order // k]


def moe_unpermute_ref(ys: torch.Tensor, w: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ys (T*K, d) in expert order, w (T, K), inv (T, K) -> (T, d) in dtype. Plain PyTorch: the
    weights multiply in fp32 (promote(fp32, w)), summed over K in fp32, one cast at the end."""
    T, K = inv.shape
    y = ys[inv.reshape(-1)].view(T, K, -1)  # back to (token, slot) order
    return (y.float() * w[..., None]).sum(1).to(dtype)


class MoEPermuteFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        from .triton_moe import permute_fwd
        ctx.save_for_backward(inv)
        ctx.dtype = x.dtype
        return permute_fwd(x, inv)

    @staticmethod
    @once_differentiable
    def backward(ctx, dxs: torch.Tensor):
        from .triton_moe import permute_bwd
        (inv,) = ctx.saved_tensors
        return permute_bwd(dxs, inv, ctx.dtype), None


class MoEUnpermuteFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys: torch.Tensor, w: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        from .triton_moe import unpermute_fwd
        ctx.save_for_backward(ys, w, inv)
        return unpermute_fwd(ys, w, inv, dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: torch.Tensor):
        from .triton_moe import unpermute_bwd
        ys, w, inv = ctx.saved_tensors
        dys, dw = unpermute_bwd(dout, ys, w, inv)
        return dys, (dw if ctx.needs_input_grad[1] else None), None, None


def moe_permute_fused(x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    return MoEPermuteFn.apply(x, inv.contiguous())


def moe_unpermute_fused(ys: torch.Tensor, w: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return MoEUnpermuteFn.apply(ys, w, inv.contiguous(), dtype)


def _index_ok(inv: torch.Tensor, like: torch.Tensor, T: int) -> bool:
    return inv.device == like.device and inv.dtype == torch.int64 and inv.dim() == 2 and inv.shape[0] == T


def moe_permute(x: torch.Tensor, order: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """x (T, d), order (T*K,), inv (T, K) -> xs (T*K, d). Fused on CUDA, else the reference."""
    if use_fused(x) and x.dim() == 2 and _index_ok(inv, x, x.shape[0]):
        return moe_permute_fused(x, inv)
    return moe_permute_ref(x, order, inv.shape[1])


def moe_unpermute(ys: torch.Tensor, w: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ys (T*K, d), w (T, K), inv (T, K) -> (T, d). Fused on CUDA, else the reference."""
    if (use_fused(ys, w) and ys.dim() == 2 and _index_ok(inv, ys, w.shape[0]) and w.shape == inv.shape
            and ys.shape[0] == inv.numel() and dtype in (torch.float32, torch.bfloat16, torch.float16)):
        return moe_unpermute_fused(ys, w, inv, dtype)
    return moe_unpermute_ref(ys, w, inv, dtype)

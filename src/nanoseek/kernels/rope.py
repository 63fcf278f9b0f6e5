"""MLA RoPE fused with the q / k assembly: reference, fused Triton path (fwd + bwd), dispatch.

MLA's attention inputs are q = [q_nope | rot(q_pe)] per head and k = [k_nope | rot(k_pe)] with
one k_pe (B, T, dr) shared by all heads. Eager: slice pairs, 4 multiplies, 2 adds, a cat of the
halves, then a cat with the nope part (and an expand of k_pe over heads): ~10 kernels each way.
Fused: one pass writes the assembled (B, S, H, dn + dr) buffer; the backward writes dq (or
dk_nope and the head-summed dk_pe) straight into the gradient buffers. cos / sin (B, S, dr/2)
are per token (positions restart per packed document; YaRN already folded in) and get no grad.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .dispatch import use_fused


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, S, H, dr) interleaved pairs; cos, sin (B, S, dr/2) -> rotated, de-interleaved
    [x1 c - x2 s | x2 c + x1 s] in x.dtype (HF `apply_rotary_pos_emb_interleave`)."""
    cos, sin = cos[:, :, None].to(x.dtype), sin[:, :, None].to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rope_q_ref(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dn: int) -> torch.Tensor:
    """q (B, S, H, dn + dr) = [nope | pe] -> (B, S, H, dn + dr), pe rotated. Plain PyTorch."""
    return torch.cat([q[..., :dn], rope_ref(q[..., dn:], cos, sin)], dim=-1)


def rope_k_ref(k_nope: torch.Tensor, k_pe: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """k_nope (B, T, H, dn), k_pe (B, T, dr) shared by the heads -> (B, T, H, dn + dr). Plain PyTorch."""
    B, T, H, _ = k_nope.shape
    k_pe = rope_ref(k_pe[:, :, None], cos, sin)  # (B, T, 1, dr)
    return torch.cat([k_nope, k_pe.expand(B, T, H, k_pe.shape[-1])], dim=-1)


def _bcast(c: torch.Tensor, B: int, S: int) -> torch.Tensor:
    return c.expand(B, S, c.shape[-1])  # (1, S, dr/2) -> (B, S, dr/2) stride-0 view


class RopeQFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dn: int) -> torch.Tensor:
        from .triton_rope import rope_fwd
        B, S = q.shape[:2]
        cos, sin = _bcast(cos, B, S), _bcast(sin, B, S)
        ctx.save_for_backward(cos, sin)
        ctx.dn = dn
        return rope_fwd(q[..., :dn], q[..., dn:], cos, sin)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: torch.Tensor):
        from .triton_rope import rope_bwd_q
        cos, sin = ctx.saved_tensors
        return rope_bwd_q(dout, cos, sin, ctx.dn), None, None, None


class RopeKFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k_nope: torch.Tensor, k_pe: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        from .triton_rope import rope_fwd
        B, T, H, dn = k_nope.shape
        cos, sin = _bcast(cos, B, T), _bcast(sin, B, T)
        ctx.save_for_backward(cos, sin)
        ctx.dn = dn
        return rope_fwd(k_nope, k_pe[:, :, None].expand(B, T, H, k_pe.shape[-1]), cos, sin)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: torch.Tensor):
        from .triton_rope import rope_bwd_k
        cos, sin = ctx.saved_tensors
        dkn, dkp = rope_bwd_k(dout, cos, sin, ctx.dn)
        return dkn, dkp, None, None


def rope_q_fused(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dn: int) -> torch.Tensor:
    return RopeQFn.apply(q, cos, sin, dn)


def rope_k_fused(k_nope: torch.Tensor, k_pe: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return RopeKFn.apply(k_nope, k_pe, cos, sin)


def _cos_ok(cos: torch.Tensor, sin: torch.Tensor, B: int, S: int, dr: int) -> bool:
    # per-token tables the kernels index as (b, s, j); no grad through them (position tables)
    return (cos.shape == sin.shape and cos.dim() == 3 and cos.shape[0] in (1, B)
            and cos.shape[1:] == (S, dr // 2) and dr % 2 == 0 and not (cos.requires_grad or sin.requires_grad))


def rope_q(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dn: int) -> torch.Tensor:
    """Fused on CUDA (see dispatch.use_fused), else the reference."""
    if use_fused(q, cos, sin) and q.dim() == 4 and _cos_ok(cos, sin, q.shape[0], q.shape[1], q.shape[3] - dn):
        return rope_q_fused(q, cos, sin, dn)
    return rope_q_ref(q, cos, sin, dn)


def rope_k(k_nope: torch.Tensor, k_pe: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Fused on CUDA (see dispatch.use_fused), else the reference."""
    B, T = k_nope.shape[:2]
    if (use_fused(k_nope, k_pe, cos, sin) and k_nope.dim() == 4 and k_pe.shape[:2] == (B, T)
            and k_pe.dim() == 3 and k_nope.dtype == k_pe.dtype and _cos_ok(cos, sin, B, T, k_pe.shape[-1])):
        return rope_k_fused(k_nope, k_pe, cos, sin)
    return rope_k_ref(k_nope, k_pe, cos, sin)

"""Triton SwiGLU forward/backward: y = silu(g) * u (GPU; also runs under TRITON_INTERPRET=1).

Numerics of swiglu.swiglu_ref in g's dtype: s = cast(g / (1 + exp(-g))), y = cast(s * u).
Backward: du = cast(dy * s), dg = cast(cast(dy * u) * σ(1 + g(1 - σ))), σ = sigmoid(g),
the roundings autograd applies to F.silu(g) * u. All math in fp32. g, u, dg, du may be
row-strided views (the two halves of one (M, 2H) tensor).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import cast_rne


@triton.jit
def _offsets(M, H, BM: tl.constexpr, BH: tl.constexpr):
    # this program's (BM, BH) tile: int64 row indices (BM, 1), column indices (1, BH), mask
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    return rows[:, None], cols[None, :], (rows[:, None] < M) & (cols[None, :] < H)


@triton.jit
def _swiglu_fwd_kernel(g_ptr, u_ptr, y_ptr, sg, su, sy, M, H, BM: tl.constexpr, BH: tl.constexpr):
    r, c, mask = _offsets(M, H, BM, BH)
    g = tl.load(g_ptr + r * sg + c, mask=mask, other=0.0).to(tl.float32)  # (BM, BH)
    u = tl.load(u_ptr + r * su + c, mask=mask, other=0.0).to(tl.float32)
    s = cast_rne(g / (1.0 + tl.exp(-g)), g_ptr.dtype.element_ty).to(tl.float32)
    tl.store(y_ptr + r * sy + c, cast_rne(s * u, y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(g_ptr, u_ptr, dy_ptr, dg_ptr, du_ptr, sg, su, sdy, sdg, sdu, M, H,
                       BM: tl.constexpr, BH: tl.constexpr):
    r, c, mask = _offsets(M, H, BM, BH)
    g = tl.load(g_ptr + r * sg + c, mask=mask, other=0.0).to(tl.float32)  # (BM, BH)
    u = tl.load(u_ptr + r * su + c, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + r * sdy + c, mask=mask, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-g))
    s = cast_rne(g / (1.0 + tl.exp(-g)), g_ptr.dtype.element_ty).to(tl.float32)
    tl.store(du_ptr + r * sdu + c, cast_rne(dy * s, du_ptr.dtype.element_ty), mask=mask)
    ds = cast_rne(dy * u, g_ptr.dtype.element_ty).to(tl.float32)  # grad of silu(g)
    dg = ds * sig * (1.0 + g * (1.0 - sig))
    tl.store(dg_ptr + r * sdg + c, cast_rne(dg, dg_ptr.dtype.element_ty), mask=mask)


def _tiles(M: int, H: int):
    bh = min(1024, triton.next_power_of_2(H))
    bm = max(1, 4096 // bh)
    return (triton.cdiv(M, bm), triton.cdiv(H, bh)), bm, bh


def swiglu_fwd(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """g, u (M, H) unit stride along H -> y (M, H) contiguous."""
    M, H = g.shape
    y = torch.empty((M, H), dtype=g.dtype, device=g.device)
    grid, bm, bh = _tiles(M, H)
    if M and H:
        _swiglu_fwd_kernel[grid](g, u, y, g.stride(0), u.stride(0), y.stride(0), M, H,
                                 BM=bm, BH=bh, num_warps=8)
    return y


def swiglu_bwd(g: torch.Tensor, u: torch.Tensor, dy: torch.Tensor, dg: torch.Tensor,
               du: torch.Tensor) -> None:
    """g, u, dy (M, H) -> writes dg, du (M, H) (views allowed, unit stride along H)."""
    M, H = g.shape
    grid, bm, bh = _tiles(M, H)
    if M and H:
        _swiglu_bwd_kernel[grid](g, u, dy, dg, du, g.stride(0), u.stride(0), dy.stride(0),
                                 dg.stride(0), du.stride(0), M, H, BM=bm, BH=bh, num_warps=8)

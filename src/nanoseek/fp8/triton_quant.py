"""Triton kernels fusing amax -> scale -> cast for the three FP8 tilings (GPU only).

Imported lazily by quant.py (only for CUDA tensors), so the package imports without triton.
Numerics match quant.quant_blocks bit for bit: IEEE division (div_rn, not Triton's
approximate `/`), exact power-of-two rounding on the exponent bits, clamp to +-448 then a
round-to-nearest-even cast. Scales for activations are written column-major ((M, Kb) with
strides (1, M)): the "outer-dim-major" layout cuBLAS blockwise scaled_mm requires.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .quant import AMAX_EPS, BLOCK, FP8, FP8_MAX

# globals read inside @triton.jit must be constexpr
_EPS = tl.constexpr(AMAX_EPS)
_FMAX = tl.constexpr(FP8_MAX)


@triton.jit
def _pow2_ceil(s):
    bits = s.to(tl.int32, bitcast=True)
    exp = ((bits >> 23) & 0xFF) + tl.where((bits & 0x7FFFFF) != 0, 1, 0)
    return (exp << 23).to(tl.float32, bitcast=True)


@triton.jit
def _scale(amax, POW2: tl.constexpr):
    amax = tl.maximum(amax, _EPS)
    s = tl.math.div_rn(amax, amax * 0.0 + _FMAX)  # same-shape 448 (div_rn doesn't broadcast)
    if POW2:
        s = _pow2_ceil(s)
    return s


@triton.jit
def _cast(x, s):  # x / s, clamped, as e4m3 (s already broadcast to x's shape)
    y = tl.math.div_rn(x, s)
    return tl.minimum(tl.maximum(y, -_FMAX), _FMAX).to(tl.float8e4nv)


@triton.jit
def _act_quant_kernel(x_ptr, y_ptr, s_ptr, M, K, s_sm, s_sk,
                      POW2: tl.constexpr, BM: tl.constexpr):
    # one program: BM rows x one 128-channel tile; one scale per row
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * 128 + tl.arange(0, 128)
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # (BM, 128)
    s = _scale(tl.max(tl.abs(x), axis=1), POW2)  # (BM,)
    tl.store(y_ptr + offs, _cast(x, tl.zeros((BM, 128), tl.float32) + s[:, None]), mask=mask)
    tl.store(s_ptr + rows.to(tl.int64) * s_sm + tl.program_id(1) * s_sk, s, mask=rows < M)


@triton.jit
def _act_quant_t_kernel(x_ptr, y_ptr, s_ptr, M, K, s_sk, s_sm,
                        POW2: tl.constexpr, BK: tl.constexpr):
    # one program: 128 tokens x BK channels; one scale per channel (a 128x1 tile of x),
    # written transposed: y (K, M) so the tile is a contiguous 1x128 run of x^T
    rows = tl.program_id(0) * 128 + tl.arange(0, 128)
    cols = tl.program_id(1) * BK + tl.arange(0, BK)
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], mask=mask, other=0.0)
    x = tl.trans(x.to(tl.float32))  # (BK, 128)
    s = _scale(tl.max(tl.abs(x), axis=1), POW2)  # (BK,)
    y = _cast(x, tl.zeros((BK, 128), tl.float32) + s[:, None])
    offs_t = cols[:, None].to(tl.int64) * M + rows[None, :]
    tl.store(y_ptr + offs_t, y, mask=(cols[:, None] < K) & (rows[None, :] < M))
    tl.store(s_ptr + cols.to(tl.int64) * s_sk + tl.program_id(0) * s_sm, s, mask=cols < K)


@triton.jit
def _weight_quant_kernel(w_ptr, y_ptr, s_ptr, N, K, POW2: tl.constexpr, TRANS: tl.constexpr):
    # one program: one 128x128 block, one scale; TRANS writes the block of W^T (K, N)
    bi, bj = tl.program_id(0), tl.program_id(1)
    rows = bi * 128 + tl.arange(0, 128)
    cols = bj * 128 + tl.arange(0, 128)
    mask = (rows[:, None] < N) & (cols[None, :] < K)
    w = tl.load(w_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], mask=mask, other=0.0)
    w = w.to(tl.float32)
    s = _scale(tl.max(tl.max(tl.abs(w), axis=1), axis=0), POW2)  # scalar
    s_blk = tl.zeros((128, 128), tl.float32) + s
    if TRANS:  # transpose in fp32 (before the cast): (128 k, 128 n) block of W^T
        offs_t = cols[:, None].to(tl.int64) * N + rows[None, :]
        tl.store(y_ptr + offs_t, _cast(tl.trans(w), s_blk),
                 mask=(cols[:, None] < K) & (rows[None, :] < N))
        tl.store(s_ptr + bj * tl.cdiv(N, 128) + bi, s)
    else:
        tl.store(y_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], _cast(w, s_blk), mask=mask)
        tl.store(s_ptr + bi * tl.cdiv(K, 128) + bj, s)


def act_quant_1x128(x: torch.Tensor, pow2: bool = False):
    """x (..., K) -> (fp8 (..., K), s (..., ceil(K/128)) column-major over the flattened rows)."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K).contiguous()
    M, Kb = x2.shape[0], triton.cdiv(K, BLOCK)
    y = torch.empty_like(x2, dtype=FP8)
    s = torch.empty(Kb, M, device=x.device, dtype=torch.float32).t()  # (M, Kb) strides (1, M)
    BM = 32
    grid = (triton.cdiv(M, BM), Kb)
    if M:
        _act_quant_kernel[grid](x2, y, s, M, K, s.stride(0), s.stride(1),
                                POW2=pow2, BM=BM, num_warps=4)
    return y.view(x.shape), s.reshape(*x.shape[:-1], Kb)


def act_quant_t(x: torch.Tensor, pow2: bool = False):
    """x (M, K) -> (x^T fp8 (K, M) contiguous, s (K, ceil(M/128)) column-major)."""
    x = x.contiguous()
    M, K = x.shape
    Mb = triton.cdiv(M, BLOCK)
    y = torch.empty(K, M, device=x.device, dtype=FP8)
    s = torch.empty(Mb, K, device=x.device, dtype=torch.float32).t()  # (K, Mb) strides (1, K)
    BK = 64
    if M and K:
        _act_quant_t_kernel[(Mb, triton.cdiv(K, BK))](x, y, s, M, K, s.stride(0), s.stride(1),
                                                      POW2=pow2, BK=BK, num_warps=8)
    return y, s


def weight_quant_128x128(w: torch.Tensor, pow2: bool = False, transpose: bool = False):
    """w (N, K) -> (fp8 (N, K), s (Nb, Kb)); transpose=True -> (fp8 W^T (K, N), s^T (Kb, Nb))."""
    w = w.contiguous()
    N, K = w.shape
    Nb, Kb = triton.cdiv(N, BLOCK), triton.cdiv(K, BLOCK)
    y = torch.empty((K, N) if transpose else (N, K), device=w.device, dtype=FP8)
    s = torch.empty((Kb, Nb) if transpose else (Nb, Kb), device=w.device, dtype=torch.float32)
    if N and K:
        _weight_quant_kernel[(Nb, Kb)](w, y, s, N, K, POW2=pow2, TRANS=transpose, num_warps=8)
    return y, s

"""Triton RMSNorm forward/backward (GPU; also runs under TRITON_INTERPRET=1 on CPU tensors).

Numerics of rmsnorm.rms_norm_ref: xn = cast_x(x * rstd) with rstd = 1/sqrt(mean(x²) + eps) in
fp32, y = cast_y(w * xn), y dtype = promote(x, w). Backward in fp32: g = cast_x(dy * w) (the
rounding autograd applies), dx = rstd * (g - xhat * mean(g * xhat)), dw = Σ_rows dy * xn.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import rows2d
from .triton_common import cast_rne, n_programs


@triton.jit
def _rms_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, sx, sy, N, eps, BLOCK_N: tl.constexpr):
    # one program per row: x (M, N) -> y (M, N), rstd (M,) fp32
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(x_ptr + row * sx + cols, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_N,)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    xn = cast_rne(x * rstd, x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * sy + cols, cast_rne(w * xn, y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _rms_bwd_kernel(x_ptr, w_ptr, dy_ptr, rstd_ptr, dx_ptr, dwp_ptr, sx, sdy, sdx, M, N, rows_per,
                    BLOCK_N: tl.constexpr):
    # program p: rows [p*rows_per, (p+1)*rows_per) of x, dy, dx (M, N); writes its dw partial
    # sum to row p of dwp (P, N) fp32
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    start = pid.to(tl.int64) * rows_per
    for i in range(0, tl.minimum(rows_per, M - start)):
        r = start + i
        x = tl.load(x_ptr + r * sx + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + r * sdy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + r)
        xhat = x * rstd
        dw += dy * cast_rne(xhat, x_ptr.dtype.element_ty).to(tl.float32)
        g = cast_rne(dy * w, x_ptr.dtype.element_ty).to(tl.float32)
        dx = (g - xhat * (tl.sum(g * xhat, axis=0) / N)) * rstd
        tl.store(dx_ptr + r * sdx + cols, cast_rne(dx, dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dwp_ptr + pid * N + cols, dw, mask=mask)


def _warps(block_n: int) -> int:
    return 4 if block_n <= 1024 else 8 if block_n <= 4096 else 16


def rms_norm_fwd(x: torch.Tensor, w: torch.Tensor, eps: float):
    """x (..., N), w (N,) -> y (..., N) in promote(x, w), rstd (M,) fp32 (M = rows of x)."""
    x2, w = rows2d(x), w.contiguous()
    M, N = x2.shape
    y = torch.empty((M, N), dtype=torch.promote_types(x.dtype, w.dtype), device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    bn = triton.next_power_of_2(N)
    if M:
        _rms_fwd_kernel[(M,)](x2, w, y, rstd, x2.stride(0), y.stride(0), N, eps,
                              BLOCK_N=bn, num_warps=_warps(bn))
    return y.view(x.shape), rstd


def rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, rstd: torch.Tensor):
    """dy (..., N) -> dx (..., N) in x.dtype, dw (N,) in w.dtype (summed over rows in fp32)."""
    x2, dy2, w = rows2d(x), rows2d(dy), w.contiguous()
    M, N = x2.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return dx.view(x.shape), torch.zeros_like(w)
    P = n_programs(M, x.device)
    rows_per = triton.cdiv(M, P)
    P = triton.cdiv(M, rows_per)
    dwp = torch.empty((P, N), dtype=torch.float32, device=x.device)  # (P, N) partial sums
    bn = triton.next_power_of_2(N)
    _rms_bwd_kernel[(P,)](x2, w, dy2, rstd, dx, dwp, x2.stride(0), dy2.stride(0), dx.stride(0),
                          M, N, rows_per, BLOCK_N=bn, num_warps=_warps(bn))
    return dx.view(x.shape), dwp.sum(0).to(w.dtype)

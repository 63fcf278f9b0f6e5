"""Triton MoE permute / unpermute, forward/backward (GPU; also runs under TRITON_INTERPRET=1).

All four kernels are owner-computes over tokens: a program owns BT tokens t and visits their K
(token, slot) pairs through inv (T, K), inv[t, k] = the pair's row in expert order. inv is a
permutation, so writes never collide and reductions run in a fixed order: no atomics,
deterministic. Math in fp32; every output is rounded once (as the reference on GPU does).
  permute  fwd: xs[inv[t, k]] = x[t]                     bwd: dx[t] = Σ_k dxs[inv[t, k]]
  unpermute fwd: out[t] = Σ_k fp32(ys[inv[t, k]]) w[t, k]
            bwd: dys[inv[t, k]] = dout[t] w[t, k],  dw[t, k] = Σ_d dout[t] · ys[inv[t, k]]
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import cast_rne


@triton.jit
def _tile(T, D, BT: tl.constexpr, BD: tl.constexpr):
    # this program's tokens (BT,) int64, columns (1, BD), mask (BT, BD)
    t = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    c = tl.program_id(1) * BD + tl.arange(0, BD)[None, :]
    return t, c, (t < T)[:, None] & (c < D)


@triton.jit
def _permute_fwd_kernel(x_ptr, inv_ptr, xs_ptr, sx, sxs, T, D, K, BT: tl.constexpr, BD: tl.constexpr):
    # x (T, D) -> xs (T*K, D): each token row read once, written to its K slots
    t, c, m = _tile(T, D, BT, BD)
    v = tl.load(x_ptr + t[:, None] * sx + c, mask=m)  # (BT, BD)
    for k in range(K):
        dst = tl.load(inv_ptr + t * K + k, mask=t < T, other=0)  # (BT,)
        tl.store(xs_ptr + dst[:, None] * sxs + c, v, mask=m)


@triton.jit
def _permute_bwd_kernel(dxs_ptr, inv_ptr, dx_ptr, sdxs, sdx, T, D, K, BT: tl.constexpr, BD: tl.constexpr):
    # dxs (T*K, D) -> dx (T, D): the K rows of each token summed in fp32, slot order, one rounding
    t, c, m = _tile(T, D, BT, BD)
    acc = tl.zeros((BT, BD), dtype=tl.float32)
    for k in range(K):
        src = tl.load(inv_ptr + t * K + k, mask=t < T, other=0)
        acc += tl.load(dxs_ptr + src[:, None] * sdxs + c, mask=m, other=0.0).to(tl.float32)
    tl.store(dx_ptr + t[:, None] * sdx + c, cast_rne(acc, dx_ptr.dtype.element_ty), mask=m)


@triton.jit
def _unpermute_fwd_kernel(ys_ptr, w_ptr, inv_ptr, out_ptr, sys_, swt, swk, sout, T, D, K,
                          BT: tl.constexpr, BD: tl.constexpr):
    # ys (T*K, D), w (T, K) -> out (T, D) = Σ_k fp32(ys row) * fp32(w), rounded once to out dtype
    t, c, m = _tile(T, D, BT, BD)
    acc = tl.zeros((BT, BD), dtype=tl.float32)
    for k in range(K):
        src = tl.load(inv_ptr + t * K + k, mask=t < T, other=0)
        wk = tl.load(w_ptr + t * swt + k * swk, mask=t < T, other=0.0).to(tl.float32)  # (BT,)
        acc += tl.load(ys_ptr + src[:, None] * sys_ + c, mask=m, other=0.0).to(tl.float32) * wk[:, None]
    tl.store(out_ptr + t[:, None] * sout + c, cast_rne(acc, out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _unpermute_bwd_kernel(do_ptr, ys_ptr, w_ptr, inv_ptr, dys_ptr, dw_ptr, sdo, sys_, swt, swk, sdys,
                          T, D, K, BT: tl.constexpr, BD: tl.constexpr):
    # program: BT tokens, all D columns (dw needs the whole row). dout (T, D) -> dys (T*K, D),
    # dw (T, K) contiguous
    t = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    tm = t < T
    for k in range(K):
        src = tl.load(inv_ptr + t * K + k, mask=tm, other=0)
        wk = tl.load(w_ptr + t * swt + k * swk, mask=tm, other=0.0).to(tl.float32)
        dot = tl.zeros((BT,), dtype=tl.float32)
        for d0 in range(0, D, BD):
            c = d0 + tl.arange(0, BD)[None, :]
            m = tm[:, None] & (c < D)
            g = tl.load(do_ptr + t[:, None] * sdo + c, mask=m, other=0.0).to(tl.float32)  # (BT, BD)
            y = tl.load(ys_ptr + src[:, None] * sys_ + c, mask=m, other=0.0).to(tl.float32)
            tl.store(dys_ptr + src[:, None] * sdys + c, cast_rne(g * wk[:, None], dys_ptr.dtype.element_ty), mask=m)
            dot += tl.sum(g * y, axis=1)
        tl.store(dw_ptr + t * K + k, cast_rne(dot, dw_ptr.dtype.element_ty), mask=tm)


def _tiles(T: int, D: int):
    bd = min(1024, max(1, triton.next_power_of_2(D)))
    bt = max(1, 4096 // bd)
    return (triton.cdiv(T, bt), triton.cdiv(D, bd)), bt, bd


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def permute_fwd(x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """x (T, D), inv (T, K) int64 contiguous -> xs (T*K, D) in expert order."""
    x = _rows(x)
    (T, D), K = x.shape, inv.shape[1]
    xs = torch.empty((T * K, D), dtype=x.dtype, device=x.device)
    grid, bt, bd = _tiles(T, D)
    if T and D and K:
        _permute_fwd_kernel[grid](x, inv, xs, x.stride(0), xs.stride(0), T, D, K, BT=bt, BD=bd, num_warps=4)
    return xs


def permute_bwd(dxs: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """dxs (T*K, D) -> dx (T, D) in dtype."""
    dxs = _rows(dxs)
    (T, K), D = inv.shape, dxs.shape[1]
    dx = torch.empty((T, D), dtype=dtype, device=dxs.device)
    grid, bt, bd = _tiles(T, D)
    if T and D:  # K == 0 leaves nothing to sum: zeros
        if K == 0:
            return dx.zero_()
        _permute_bwd_kernel[grid](dxs, inv, dx, dxs.stride(0), dx.stride(0), T, D, K, BT=bt, BD=bd, num_warps=4)
    return dx


def unpermute_fwd(ys: torch.Tensor, w: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ys (T*K, D), w (T, K), inv (T, K) -> out (T, D) in dtype."""
    ys = _rows(ys)
    (T, K), D = inv.shape, ys.shape[1]
    out = torch.zeros((T, D), dtype=dtype, device=ys.device)
    grid, bt, bd = _tiles(T, D)
    if T and D and K:
        _unpermute_fwd_kernel[grid](ys, w, inv, out, ys.stride(0), *w.stride(), out.stride(0), T, D, K,
                                    BT=bt, BD=bd, num_warps=4)
    return out


def unpermute_bwd(dout: torch.Tensor, ys: torch.Tensor, w: torch.Tensor, inv: torch.Tensor):
    """dout (T, D) -> dys (T*K, D) in ys.dtype, dw (T, K) in w.dtype."""
    dout, ys = _rows(dout), _rows(ys)
    (T, K), D = inv.shape, ys.shape[1]
    dys = torch.empty_like(ys, memory_format=torch.contiguous_format)
    dw = torch.zeros((T, K), dtype=w.dtype, device=w.device)
    bd = min(512, max(1, triton.next_power_of_2(D)))
    bt = max(1, 2048 // bd)
    if T and K:
        if D == 0:
            return dys, dw
        _unpermute_bwd_kernel[(triton.cdiv(T, bt),)](dout, ys, w, inv, dys, dw, dout.stride(0), ys.stride(0),
                                                      *w.stride(), dys.stride(0), T, D, K, BT=bt, BD=bd,
                                                      num_warps=4)
    return dys, dw

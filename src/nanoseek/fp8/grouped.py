"""FP8 grouped GEMM for MoE experts: out[rows of expert e] = x[rows of e] @ w[e].

Layout as torch._grouped_mm (torchtitan GroupedExperts): x (T, K) tokens sorted by expert,
w (E, K, M) (typically a transposed view of an (E, M, K) parameter), offs (E,) int32
cumulative row ends. Autograd covers x and w.

Recipes (torch has no 1x128/128x128 *grouped* kernel, EFFICIENCY.md "Known gap"):
  "rowwise"   per-token scales for activations/grads, per-(expert, output channel) scales for
              weights, per-(expert, channel) scales over the expert's tokens for Wgrad.
              On SM90 this runs torch._scaled_grouped_mm (CUTLASS), groups padded to 16 rows.
  "blockwise" DeepSeek's 1x128 / 128x128 tiles (as FP8Linear), emulated on every device.
The emulation loops over experts and dequantizes exactly the tiles the recipe uses, then runs
an fp32 matmul: the CPU test oracle and the fallback if the native call raises.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import linear as _lin
from .quant import AMAX_EPS, BLOCK, FP8, FP8_MAX, dequant_blocks, pow2_ceil, quant_blocks

ALIGN = 16  # FP8 grouped GEMM: 16-byte TMA strides -> groups of 16 rows (ao #2678, tt #2262)


def fp8_grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor,
                   recipe: str = "rowwise", pow2: bool = False) -> torch.Tensor:
    """x (T, K) @ w (E, K, M) per expert group -> (T, M) in x.dtype."""
    assert recipe in ("rowwise", "blockwise"), recipe
    assert x.dim() == 2 and w.dim() == 3 and offs.shape == (w.shape[0],)
    return _FP8GroupedMM.apply(x, w, offs, recipe, pow2)


# ------------------------------------------------------------------ emulation

def _qdq(t, bm, bk, pow2):  # quantize-dequantize with (bm x bk) tiles; None = whole dim
    return dequant_blocks(*quant_blocks(t, bm, bk, pow2), bm, bk)


def _emulate(op, x, w, offs, recipe, pow2, dy=None):
    """Per-expert loop. x (T, K), w (E, K, M), dy (T, M). Tiles never straddle a reduction dim."""
    blk = BLOCK if recipe == "blockwise" else None
    wb = (BLOCK, BLOCK) if recipe == "blockwise" else (None, 1)  # (reduction, out) tiles of w_e
    T, K = x.shape
    E, _, M = w.shape
    out = x.new_zeros({"fwd": (T, M), "dgrad": (T, K), "wgrad": (E, K, M)}[op], dtype=torch.float32)
    start = 0
    for e, end in enumerate(offs.tolist()):
        xs = x[start:end]
        if end > start:
            if op == "fwd":      # y_e = x_e @ w_e          reduce K
                out[start:end] = _qdq(xs, 1, blk, pow2) @ _qdq(w[e], *wb, pow2)
            elif op == "dgrad":  # dx_e = dy_e @ w_e^T      reduce M
                out[start:end] = _qdq(dy[start:end], 1, blk, pow2) @ _qdq(w[e].t(), *wb, pow2)
            else:                # dw_e = x_e^T @ dy_e      reduce tokens
                out[e] = _qdq(xs.t(), 1, blk, pow2) @ _qdq(dy[start:end], blk, 1, pow2)
        start = end
    return out


# ------------------------------------------------------------------ native (CUDA, rowwise)

def _rowwise(t, dim, pow2):
    """Scale over `dim` (kept): s = max(amax, 1e-4)/448, q = t/s in e4m3."""
    s = t.abs().amax(dim=dim, keepdim=True).float().clamp_min(AMAX_EPS) / FP8_MAX
    s = pow2_ceil(s) if pow2 else s
    return (t.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8), s


def _layout(offs, T):
    """Padded group layout: each group starts at a multiple of ALIGN rows.

    Returns dest (T,) row index of each token in the padded buffer, padded ends (E,) int32,
    the per-padded-row group id, and a static capacity (no host sync)."""
    E = offs.shape[0]
    ends = offs.long()
    counts = ends - F.pad(ends[:-1], (1, 0))
    pcounts = (counts + ALIGN - 1) // ALIGN * ALIGN
    pends = pcounts.cumsum(0)
    cap = (T + E * (ALIGN - 1) + ALIGN - 1) // ALIGN * ALIGN
    rows = torch.arange(T, device=offs.device)
    gid = torch.searchsorted(ends, rows, right=True).clamp_max(E - 1)
    dest = rows + ((pends - pcounts) - (ends - counts))[gid]
    gid_p = torch.searchsorted(pends, torch.arange(cap, device=offs.device), right=True)
    return dest, pends.to(torch.int32), gid_p.clamp_max(E - 1), cap


def _scatter(t, dest, cap):  # (T, D) -> (cap, D), zero rows between groups (no effect on amax)
    buf = t.new_zeros(cap, t.shape[1])
    buf[dest] = t
    return buf


def _col_major3(t):  # (E, R, C) with strides (RC, 1, R): per-group column-major
    return t if (t.stride(-2) == 1 and t.stride(-1) == t.shape[-2]) else t.mT.contiguous().mT


def _native(op, x, w, offs, pow2, dy=None):
    E, K, M = w.shape
    dest, pends, gid_p, cap = _layout(offs, x.shape[0])
    mm = torch._scaled_grouped_mm
    if op == "fwd":
        xq, xs = _rowwise(_scatter(x, dest, cap), -1, pow2)  # (cap, K), (cap, 1)
        wq, ws = _rowwise(w, 1, pow2)  # per (e, m) over K: ws (E, 1, M)
        y = mm(xq, _col_major3(wq), xs.reshape(-1), ws.reshape(E, M).contiguous(),
               offs=pends, out_dtype=torch.bfloat16)
        return y[dest]
    if op == "dgrad":
        dq, ds = _rowwise(_scatter(dy, dest, cap), -1, pow2)  # (cap, M)
        wq, ws = _rowwise(w, 2, pow2)  # per (e, k) over M: ws (E, K, 1)
        dx = mm(dq, wq.contiguous().mT, ds.reshape(-1), ws.reshape(E, K).contiguous(),
                offs=pends, out_dtype=torch.bfloat16)  # mat_b (E, M, K) column-major
        return dx[dest]
    # wgrad: 2d x 2d, ragged reduction over tokens; scales per (group, channel), group-major
    xp, dp = _scatter(x, dest, cap), _scatter(dy, dest, cap)
    idx_x, idx_d = gid_p[:, None].expand(-1, K), gid_p[:, None].expand(-1, M)
    sx = xp.new_zeros(E, K, dtype=torch.float32).scatter_reduce_(0, idx_x, xp.abs().float(), "amax")
    sd = dp.new_zeros(E, M, dtype=torch.float32).scatter_reduce_(0, idx_d, dp.abs().float(), "amax")
    sx, sd = (s.clamp_min(AMAX_EPS) / FP8_MAX for s in (sx, sd))
    if pow2:
        sx, sd = pow2_ceil(sx), pow2_ceil(sd)
    xq = (xp.float() / sx[gid_p]).clamp(-FP8_MAX, FP8_MAX).to(FP8)  # (cap, K)
    dq = (dp.float() / sd[gid_p]).clamp(-FP8_MAX, FP8_MAX).to(FP8)  # (cap, M)
    return mm(xq.t().contiguous(), dq.t().contiguous().t(), sx.reshape(-1), sd.reshape(-1),
              offs=pends, out_dtype=torch.bfloat16)  # (E, K, M)


def _run(op, x, w, offs, recipe, pow2, dy=None):
    backend = _lin._BACKEND
    if (x.is_cuda and recipe == "rowwise" and backend != "emulate"
            and hasattr(torch, "_scaled_grouped_mm")):
        try:
            return _native(op, x, w, offs, pow2, dy)
        except RuntimeError as e:
            if backend == "native":
                raise
            _lin._warn_once("grouped", f"FP8 _scaled_grouped_mm unavailable, emulating ({e})")
    return _emulate(op, x, w, offs, recipe, pow2, dy)


class _FP8GroupedMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, offs, recipe, pow2):
        ctx.save_for_backward(x, w, offs)
        ctx.cfg = (recipe, pow2)
        with torch.autocast(x.device.type, enabled=False):
            return _run("fwd", x, w, offs, recipe, pow2).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, w, offs = ctx.saved_tensors
        recipe, pow2 = ctx.cfg
        dy = dy.contiguous()
        dx = dw = None
        with torch.autocast(dy.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                dx = _run("dgrad", x, w, offs, recipe, pow2, dy).to(x.dtype)
            if ctx.needs_input_grad[1]:
                dw = _run("wgrad", x, w, offs, recipe, pow2, dy).to(w.dtype)
        return dx, dw, None, None, None

"""FP8Linear: all three GEMMs of a Linear in fine-grained FP8 (DeepSeek-V3 §3.3).

Every GEMM is written "NT" (both operands contiguous along the reduction dim K), the
layout cuBLAS FP8 wants: C (M, N) = A (M, K) @ B (N, K)^T, fp32 accumulation.

    Fprop  y  = x  W^T : A = x     1x128 tiles along K,   B = W    128x128 blocks
    Dgrad  dx = dy W   : A = dy    1x128 tiles along N,   B = W^T  128x128 blocks (same blocks)
    Wgrad  dW = dy^T x : A = dy^T  1x128 tiles along M,   B = x^T  1x128 tiles along M
                         (i.e. 128x1 tiles of dy and x: tiles never straddle the reduction dim)

Backends: on Hopper `F.scaled_mm` with ScalingType.BlockWise1x128 x BlockWise{128x128,1x128}
(cuBLASLt); anywhere else, or if that call raises, an emulation that dequantizes exactly the
same tiles and runs an fp32 matmul (numerically the FP8 GEMM up to summation order).
The forward caches x^T in FP8 (128x1 tiles) for Wgrad instead of the bf16 x (V3 §3.3.3).
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quant import (BLOCK, dequant_blocks, quantize_act_1x128, quantize_act_t,
                    quantize_weight_128x128)

_BACKEND = "auto"  # "auto" (native on CUDA, else emulate) | "emulate" | "native" (raise on failure)
_WARNED: set[str] = set()
_WORKING: dict[tuple, int] = {}  # (recipe_b, Kb % 4) -> index of the scaled_mm variant that worked


def set_fp8_backend(name: str) -> str:
    """Select the FP8 GEMM backend globally; returns the previous one (for try/finally)."""
    global _BACKEND
    assert name in ("auto", "emulate", "native"), name
    prev, _BACKEND = _BACKEND, name
    return prev


def _warn_once(key: str, msg: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(msg, stacklevel=3)


def _col_major(s: torch.Tensor) -> torch.Tensor:
    """(R, C) scale in outer-dim-major layout, strides (1, R): required by cuBLAS blockwise."""
    if s.stride(0) == 1 and (s.stride(1) == s.shape[0] or s.shape[1] == 1):
        return s
    return s.t().contiguous().t()


def _kblock_major(s: torch.Tensor, pad4: bool) -> torch.Tensor:
    """128x128 scale of B given as (Nb, Kb) -> (Kb', Nb) with strides (1, Kb').

    torch's _scaled_block1x128_block128x128 wants scale_b shape (round_up(Kb, 4), Nb),
    strides (1, round_up(Kb, 4)); pad4=False is the un-padded variant of other versions.
    """
    Nb, Kb = s.shape
    L = -(-Kb // 4) * 4 if pad4 else Kb
    buf = s.new_ones(Nb, L)
    buf[:, :Kb] = s
    return buf.t()


def _native_variants(b_block: int, Kb: int):
    """Candidate (fn, scale_b builder) for this torch; tried in order, first success cached."""
    out = []
    if hasattr(F, "scaled_mm") and hasattr(F, "ScalingType"):
        ST = F.ScalingType
        rb = ST.BlockWise128x128 if b_block == BLOCK else ST.BlockWise1x128

        def v2(a, b, sa, sb, dt):
            return F.scaled_mm(a, b, sa, ST.BlockWise1x128, sb, rb, output_dtype=dt)
        out.append(v2)
    if hasattr(torch, "_scaled_mm"):
        def v1(a, b, sa, sb, dt):  # legacy op: recipe inferred from scale shapes, 1x128 B as (Kb, N)
            sb = sb.t() if b_block == 1 else sb
            return torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=dt)
        out.append(v1)
    pads = [True, False] if (b_block == BLOCK and Kb % 4) else [b_block == BLOCK]
    return [(fn, p) for fn in out for p in pads]


def _native_mm_nt(a, a_s, b, b_s, b_block, out_dtype):
    Kb = a_s.shape[1]
    sa = _col_major(a_s)  # (M, Kb) strides (1, M)
    variants = _native_variants(b_block, Kb)
    key = (b_block, Kb % 4, out_dtype)
    order = [_WORKING[key]] if key in _WORKING else range(len(variants))
    err = None
    for i in order:
        fn, pad4 = variants[i]
        sb = _kblock_major(b_s, pad4) if b_block == BLOCK else _col_major(b_s)
        try:
            out = fn(a, b.t(), sa, sb, out_dtype)  # b.t(): (K, N) column-major
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
            err = e
            continue
        _WORKING[key] = i
        return out
    raise RuntimeError(f"no blockwise scaled_mm variant accepted the call: {err}") from err


def emulated_mm_nt(a, a_s, b, b_s, b_block: int = BLOCK, out_dtype=torch.bfloat16):
    """Reference FP8 GEMM: dequantize the same tiles, fp32 matmul, cast. C = A @ B^T."""
    A = dequant_blocks(a, a_s.reshape(a.shape[0], -1), 1, BLOCK)
    B = dequant_blocks(b, b_s, b_block, BLOCK)
    return (A @ B.t()).to(out_dtype)


def fp8_mm_nt(a, a_s, b, b_s, b_block: int = BLOCK, out_dtype=torch.bfloat16, backend=None):
    """C (M, N) = A (M, K) @ B (N, K)^T with A in 1x128 tiles and B in b_block x 128 blocks.

    a, b: float8_e4m3fn, K-contiguous. a_s (M, ceil(K/128)); b_s (ceil(N/128), ceil(K/128))
    for b_block=128, (N, ceil(K/128)) for b_block=1. fp32 accumulation; output out_dtype.
    """
    backend = backend or _BACKEND
    if a.is_cuda and backend != "emulate":
        try:
            return _native_mm_nt(a, a_s, b, b_s, b_block, out_dtype)
        except RuntimeError as e:
            if backend == "native":
                raise
            _warn_once("mm", f"FP8 blockwise scaled_mm unavailable, emulating in fp32 ({e})")
    return emulated_mm_nt(a, a_s, b, b_s, b_block, out_dtype)


def _pad_rows(t: torch.Tensor, mult: int = BLOCK) -> torch.Tensor:
    # zero rows change no tile's amax and add nothing to any GEMM; Wgrad needs M % 128 == 0
    r = -t.shape[0] % mult
    return F.pad(t, (0, 0, 0, r)) if r else t


class FP8LinearFn(torch.autograd.Function):
    """y = x W^T (+ b) with Fprop/Dgrad/Wgrad in FP8; output in x.dtype, dW in W.dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, pow2: bool = False):
        N, K = weight.shape
        x2 = x.reshape(-1, K)
        M = x2.shape[0]
        x2 = _pad_rows(x2)  # (Mp, K)
        xq, xs = quantize_act_1x128(x2, pow2)
        wq, ws = quantize_weight_128x128(weight, pow2)
        y = fp8_mm_nt(xq, xs, wq, ws, BLOCK, x.dtype)[:M]  # (M, N)
        if ctx.needs_input_grad[1]:
            xtq, xts = quantize_act_t(x2, pow2)  # (K, Mp) fp8: the only copy of x kept
        else:
            xtq = xts = None
        ctx.save_for_backward(xtq, xts, weight)
        ctx.meta = (x.shape, x.dtype, M, pow2, bias is not None)
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.view(*x.shape[:-1], N)

    @staticmethod
    def backward(ctx, dy):
        with _no_autocast(dy.device.type):
            return FP8LinearFn._backward(ctx, dy)

    @staticmethod
    def _backward(ctx, dy):
        xtq, xts, weight = ctx.saved_tensors
        x_shape, x_dtype, M, pow2, has_bias = ctx.meta
        N, K = weight.shape
        dy2 = _pad_rows(dy.reshape(-1, N))  # (Mp, N)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dyq, dys = quantize_act_1x128(dy2, pow2)  # tiles along N = Dgrad reduction dim
            wtq, wts = quantize_weight_128x128(weight, pow2, transpose=True)  # (K, N)
            dx = fp8_mm_nt(dyq, dys, wtq, wts, BLOCK, x_dtype)[:M].view(x_shape)
        if ctx.needs_input_grad[1]:
            dytq, dyts = quantize_act_t(dy2, pow2)  # (N, Mp): tiles along tokens
            dw = fp8_mm_nt(dytq, dyts, xtq, xts, 1, weight.dtype)
        if has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db, None


def _no_autocast(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


class FP8Linear(nn.Linear):
    """nn.Linear whose matmuls run in DeepSeek-style FP8; parameters/state_dict unchanged
    (master weight stays fp32/bf16). Output dtype = input dtype (bf16 in training)."""

    pow2_scales: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        if torch.is_autocast_enabled(dev):  # mimic F.linear under autocast: compute in its dtype
            x = x.to(torch.get_autocast_dtype(dev))
        with _no_autocast(dev):  # the emulation's fp32 matmul must not be downcast
            return FP8LinearFn.apply(x, self.weight, self.bias, self.pow2_scales)

    @classmethod
    def from_linear(cls, lin: nn.Linear, pow2_scales: bool = False) -> "FP8Linear":
        new = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
        new.weight, new.bias = lin.weight, lin.bias  # share Parameters: optimizer refs survive
        new.pow2_scales = pow2_scales
        new.train(lin.training)
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fp8=1x128/128x128, pow2={self.pow2_scales}"


# V3 §3.3.1 precision policy: embedding, output head, MoE router ("gate"), norms stay high
# precision; also the MTP eh_proj (bf16 in the released checkpoint). Matched per dotted name
# component so MLP `gate_proj` is still converted while the router `mlp.gate` is not.
_SKIP_EXACT = {"gate", "router", "eh_proj", "output"}
_SKIP_SUBSTR = ("embed", "head", "norm", "router")


def default_filter(name: str, mod: nn.Module, min_features: int = 512) -> bool:
    """True if the Linear at `name` should run in FP8."""
    parts = name.lower().split(".")
    if any(p in _SKIP_EXACT or any(s in p for s in _SKIP_SUBSTR) for p in parts):
        return False
    i, o = mod.in_features, mod.out_features
    # tiles must not straddle the reduction dims; tiny GEMMs lose to the quantization cost
    return i % BLOCK == 0 and o % BLOCK == 0 and min(i, o) >= min_features


def convert_to_fp8(model: nn.Module, filter_fn: Callable[[str, nn.Module], bool] = default_filter,
                   pow2_scales: bool = False) -> list[str]:
    """Swap eligible nn.Linear modules for FP8Linear in place; returns the converted names."""
    todo = [(n, m) for n, m in model.named_modules()
            if type(m) is nn.Linear and filter_fn(n, m)]
    for name, lin in todo:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, FP8Linear.from_linear(lin, pow2_scales))
    return [n for n, _ in todo]

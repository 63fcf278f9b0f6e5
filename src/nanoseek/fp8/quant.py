"""Fine-grained FP8 (E4M3) quantization: PyTorch reference + dispatch to Triton on GPU.

DeepSeek-V3 §3.3.2: activations are scaled per 1x128 tile (one token, 128 channels), weights
per 128x128 block; the scale is computed online from the tile's amax (no delayed scaling).
Scales follow DeepSeek's published checkpoint format (README_WEIGHTS.md, `weight_scale_inv`):
    dequant: x[tile] = fp8[tile].float() * scale[tile]        (scale is *multiplied*)
    quant:   s = max(amax, 1e-4) / 448 ;  fp8 = (x / s).to(e4m3)  (as `act_quant` in kernel.py)
Edge tiles of unaligned shapes are zero-padded for the amax (e.g. 576 rows = 4.5 blocks).

The plain PyTorch code here is the CPU path and the oracle for the Triton kernels
(`triton_quant.py`), which must produce the same bytes.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite E4M3 value
AMAX_EPS = 1e-4  # DeepSeek act_quant clamps amax from below (all-zero tiles -> finite scale)
BLOCK = 128


@functools.cache
def triton_available() -> bool:
    if os.environ.get("NANOSEEK_FP8_NO_TRITON"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and triton_available()


def pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """Round positive normal fp32 scales up to a power of two (UE8M0), exactly, via the bits:
    2^ceil(log2 s) = 2^(exponent + [mantissa != 0]). Same bit trick as the Triton kernels."""
    bits = s.float().contiguous().view(torch.int32)
    exp = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(torch.int32)
    return (exp << 23).view(torch.float32)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def quant_blocks(t: torch.Tensor, bm: int | None, bk: int | None, pow2: bool = False):
    """Quantize a 2-D tensor per (bm x bk) block; None = the whole dim (rowwise/colwise).

    t (M, K) -> q (M, K) float8_e4m3fn contiguous, s (ceil(M/bm), ceil(K/bk)) fp32 contiguous.
    """
    M, K = t.shape
    bm, bk = bm or max(M, 1), bk or max(K, 1)
    Mb, Kb = _ceil(M, bm), _ceil(K, bk)
    tp = F.pad(t.float(), (0, Kb * bk - K, 0, Mb * bm - M))  # zero pad: no effect on amax
    blocks = tp.reshape(Mb, bm, Kb, bk)
    s = blocks.abs().amax(dim=(1, 3)).clamp_min(AMAX_EPS) / FP8_MAX  # (Mb, Kb)
    if pow2:
        s = pow2_ceil(s)
    # clamp is a no-op except for rounding slop; it makes the cast saturating like Triton's
    q = (blocks / s[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.reshape(Mb * bm, Kb * bk)[:M, :K].contiguous(), s


def dequant_blocks(q: torch.Tensor, s: torch.Tensor, bm: int | None, bk: int | None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of quant_blocks: x[blk] = q[blk].float() * s[blk] for any (M, K)."""
    M, K = q.shape
    bm, bk = bm or max(M, 1), bk or max(K, 1)
    Mb, Kb = _ceil(M, bm), _ceil(K, bk)
    assert s.shape == (Mb, Kb), f"scale shape {tuple(s.shape)} != block grid {(Mb, Kb)}"
    qp = F.pad(q.float(), (0, Kb * bk - K, 0, Mb * bm - M)).reshape(Mb, bm, Kb, bk)
    return (qp * s.float()[:, None, :, None]).reshape(Mb * bm, Kb * bk)[:M, :K].to(dtype)


# ---------------------------------------------------------------- public API

def quantize_act_1x128(x: torch.Tensor, pow2: bool = False):
    """Activations/grads per 1x128 tile along the last dim: x (..., K) -> (fp8 (..., K), s (..., K/128)).

    Scale values are identical on every backend; the layout may differ (Triton writes them
    column-major (1, M), the layout cuBLAS wants for scaled_mm).
    """
    if _use_triton(x):
        from . import triton_quant
        return triton_quant.act_quant_1x128(x, pow2)
    x2 = x.reshape(-1, x.shape[-1])
    q, s = quant_blocks(x2, 1, BLOCK, pow2)
    return q.view(x.shape), s.view(*x.shape[:-1], s.shape[-1])


def quantize_act_t(x: torch.Tensor, pow2: bool = False):
    """x^T quantized per 1x128 tile along the token dim (= 128x1 tiles of x), for Wgrad.

    x (M, K) -> q (K, M) fp8 contiguous, s (K, ceil(M/128)) fp32. The reduction dim of
    dW = dy^T x is M (tokens), so both Wgrad operands are tiled along M (V3 Fig. 7).
    """
    assert x.dim() == 2, "quantize_act_t takes (tokens, channels)"
    if _use_triton(x):
        from . import triton_quant
        return triton_quant.act_quant_t(x, pow2)
    return quant_blocks(x.t(), 1, BLOCK, pow2)


def quantize_weight_128x128(w: torch.Tensor, pow2: bool = False, transpose: bool = False):
    """Weight (N, K) per 128x128 block -> (fp8 (N, K), s (ceil(N/128), ceil(K/128))).

    transpose=True returns W^T quantized with the *same* blocks: (fp8 (K, N) contiguous,
    s^T (ceil(K/128), ceil(N/128))), the K-contiguous operand of the Dgrad GEMM.
    """
    if _use_triton(w):
        from . import triton_quant
        return triton_quant.weight_quant_128x128(w, pow2, transpose)
    q, s = quant_blocks(w, BLOCK, BLOCK, pow2)
    if transpose:
        return q.t().contiguous(), s.t().contiguous()
    return q, s


def dequantize_act(q: torch.Tensor, s: torch.Tensor, dtype: torch.dtype = torch.float32):
    """Inverse of quantize_act_1x128: q (..., K), s (..., ceil(K/128)) -> (..., K) in dtype."""
    q2, s2 = q.reshape(-1, q.shape[-1]), s.reshape(-1, s.shape[-1])
    return dequant_blocks(q2, s2, 1, BLOCK, dtype).view(q.shape)


def dequantize_weight(w_fp8: torch.Tensor, scale_inv: torch.Tensor,
                      dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """DeepSeek checkpoint weight: W[blk] = fp8[blk].float() * weight_scale_inv[bi, bj].

    Handles any (N, K) (edge blocks partial), e.g. kv_a_proj 576x7168 -> scale (5, 56).
    """
    return dequant_blocks(w_fp8, scale_inv, BLOCK, BLOCK, dtype)

"""Triton helpers shared by the fused kernels (imported lazily: needs triton)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def cast_rne(v, dt: tl.constexpr):
    """fp32 tensor -> dt, round to nearest even (as torch's .to()). For bf16 the rounding is
    done on the bits first: the CPU interpreter's fp32->bf16 cast truncates, and this way the
    interpreter and the GPU compute the same bytes. NaN stays NaN."""
    if dt == tl.bfloat16:
        b = v.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        v = tl.where(v != v, v, b.to(tl.float32, bitcast=True))
    return v.to(dt)


def n_programs(m: int, device: torch.device) -> int:
    """Programs for row-looping kernels: a few per SM on GPU, a handful in the interpreter."""
    if device.type == "cuda":
        return max(1, min(m, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(m, 4))

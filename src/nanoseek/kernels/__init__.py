"""Fused Triton kernels for memory-bound elementwise ops (RMSNorm, SwiGLU), forward + backward.

Each op has a plain-PyTorch reference (the CPU path and the tests' oracle) and a dispatcher
that takes the Triton path only for CUDA tensors with triton importable; `NANOSEEK_FUSED=0`
or `set_fused(False)` forces the reference. Importable without triton. See docs/kernels.md.
"""
from .dispatch import fused_enabled, set_fused, triton_available, use_fused
from .rmsnorm import RMSNormFn, rms_norm, rms_norm_fused, rms_norm_ref
from .swiglu import (SwiGLUCatFn, SwiGLUFn, swiglu, swiglu_cat, swiglu_cat_fused, swiglu_cat_ref,
                     swiglu_fused, swiglu_ref)

__all__ = [
    "RMSNormFn", "SwiGLUCatFn", "SwiGLUFn", "fused_enabled", "rms_norm", "rms_norm_fused",
    "rms_norm_ref", "set_fused", "swiglu", "swiglu_cat", "swiglu_cat_fused", "swiglu_cat_ref",
    "swiglu_fused", "swiglu_ref", "triton_available", "use_fused",
]

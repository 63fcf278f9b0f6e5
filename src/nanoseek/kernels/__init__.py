"""Fused Triton kernels for memory-bound ops (RMSNorm, SwiGLU, MLA RoPE + q/k assembly, MoE
permute / unpermute), forward + backward.

Each op has a plain-PyTorch reference (the CPU path and the tests' oracle) and a dispatcher
that takes the Triton path only for CUDA tensors with triton importable; `NANOSEEK_FUSED=0`
or `set_fused(False)` forces the reference. Importable without triton. See docs/kernels.md.
"""
from .dispatch import fused_enabled, set_fused, triton_available, use_fused
from .permute import (MoEPermuteFn, MoEUnpermuteFn, inverse_permutation, moe_permute, moe_permute_fused,
                          moe_permute_ref, moe_unpermute, moe_unpermute_fused, moe_unpermute_ref)
from .rmsnorm import RMSNormFn, rms_norm, rms_norm_fused, rms_norm_ref
from .rope import (RopeKFn, RopeQFn, rope_k, rope_k_fused, rope_k_ref, rope_q, rope_q_fused, rope_q_ref,
                   rope_ref)
from .swiglu import (SwiGLUCatFn, SwiGLUFn, swiglu, swiglu_cat, swiglu_cat_fused, swiglu_cat_ref,
                     swiglu_fused, swiglu_ref)

__all__ = [
    "MoEPermuteFn", "MoEUnpermuteFn", "RopeKFn", "RopeQFn", "inverse_permutation", "moe_permute",
    "moe_permute_fused", "moe_permute_ref", "moe_unpermute", "moe_unpermute_fused", "moe_unpermute_ref",
    "rope_k", "rope_k_fused", "rope_k_ref", "rope_q", "rope_q_fused", "rope_q_ref", "rope_ref",
    "RMSNormFn", "SwiGLUCatFn", "SwiGLUFn", "fused_enabled", "rms_norm", "rms_norm_fused",
    "rms_norm_ref", "set_fused", "swiglu", "swiglu_cat", "swiglu_cat_fused", "swiglu_cat_ref",
    "swiglu_fused", "swiglu_ref", "triton_available", "use_fused",
]

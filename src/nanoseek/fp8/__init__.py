"""Fine-grained FP8 training (DeepSeek-V3 §3.3): 1x128 activation tiles, 128x128 weight blocks.

See docs/fp8.md. Importable without triton or CUDA; Triton kernels load lazily on GPU.
"""
from .grouped import fp8_grouped_mm
from .linear import (FP8Linear, FP8LinearFn, convert_to_fp8, default_filter, emulated_mm_nt,
                     fp8_mm_nt, set_fp8_backend)
from .quant import (FP8, FP8_MAX, dequantize_act, dequantize_weight, quantize_act_1x128,
                    quantize_act_t, quantize_weight_128x128)

__all__ = [
    "FP8", "FP8_MAX", "FP8Linear", "FP8LinearFn", "convert_to_fp8", "default_filter",
    "dequantize_act", "dequantize_weight", "emulated_mm_nt", "fp8_grouped_mm", "fp8_mm_nt",
    "quantize_act_1x128", "quantize_act_t", "quantize_weight_128x128", "set_fp8_backend",
]

"""Cost accounting from first principles: parameters, FLOPs/token, MFU, GPU-hours, dollars, memory.

See docs/cost.md. `nanoseek cost --v3-table` rebuilds the DeepSeek-V3 cost table.
"""

from .flops import (LLAMA31_405B, DenseConfig, FlopsBreakdown, ParamCounts, dense_param_counts, flops_per_token,
                    param_counts, six_n, training_flops)
from .gpus import GPUS, GpuSpec, current, lookup, mfu, peak_flops
from .plan import (V3_LAYOUT, CostRow, Layout, Memory, dollars, gpu_hours, implied_mfu, llama_cost_row, llama_implied_mfu,
                   llama_v3_ratio, memory_per_gpu, v3_cost_table, v3_implied_mfu)

__all__ = [
    "LLAMA31_405B", "DenseConfig", "FlopsBreakdown", "ParamCounts", "dense_param_counts", "flops_per_token",
    "param_counts", "six_n", "training_flops", "GPUS", "GpuSpec", "current", "lookup", "mfu", "peak_flops",
    "V3_LAYOUT", "CostRow", "Layout", "Memory", "dollars", "gpu_hours", "implied_mfu", "llama_cost_row",
    "llama_implied_mfu", "llama_v3_ratio", "memory_per_gpu", "v3_cost_table", "v3_implied_mfu",
]

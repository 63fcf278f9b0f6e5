"""RMSNorm: w * x / sqrt(mean(x²) + eps), statistics in fp32 (ARCHITECTURE.md §2)."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.rmsnorm import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same rounding as HF: normalise in fp32, cast back to the input dtype, then scale.
        # Fused Triton kernel on CUDA, else the plain PyTorch reference (kernels/rmsnorm.py).
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"

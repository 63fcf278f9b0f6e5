"""Dense SwiGLU MLP: down(silu(gate(x)) * up(x)). Used for the first k layers and the shared experts."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.swiglu import swiglu


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))  # fused on CUDA

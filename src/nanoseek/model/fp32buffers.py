"""Buffers that must stay fp32 when the model is cast to bf16 (router bias, RoPE frequencies)."""

from __future__ import annotations

import torch
from torch import nn


class KeepFP32Buffers(nn.Module):
    """`model.to(torch.bfloat16)` moves these buffers but never rounds them.

    The router bias receives ±γ = 1e-3 updates (bf16 would swallow them at |b| ≳ 0.25) and
    RoPE frequencies lose position resolution in bf16 (ARCHITECTURE.md §9.6).
    """

    fp32_buffers: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        saved = {n: getattr(self, n) for n in self.fp32_buffers}
        out = super()._apply(fn, recurse)
        for n, old in saved.items():
            new = getattr(self, n)
            if new.dtype != torch.float32 and old.dtype == torch.float32:
                setattr(self, n, old.to(device=new.device))
        return out

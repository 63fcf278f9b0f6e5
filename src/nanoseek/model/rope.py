"""Decoupled RoPE with YaRN scaling (ARCHITECTURE.md §3.2).

Only the qk_rope_head_dim dims of q and the shared k_pe are rotated. Checkpoints store those rows
as interleaved pairs (x0,x1),(x2,x3)...; we rotate the pairs in place of a permutation of the
weights and write the result de-interleaved ([evens' | odds']), exactly like HF
`apply_rotary_pos_emb_interleave`: q·k is unchanged since q and k get the same layout.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..kernels.rope import rope_ref
from .config import ModelConfig
from .fp32buffers import KeepFP32Buffers


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """θ'_i for i < d_r/2: base frequencies, blended towards θ_i/s by the YaRN ramp."""
    d, base = cfg.qk_rope_head_dim, cfg.rope_theta
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))  # (d/2,)
    if not cfg.uses_yarn:
        return inv

    def corr_dim(rot: float) -> float:  # dimension index whose wavelength makes `rot` turns over L0
        return d * math.log(cfg.rope_original_max_position_embeddings / (rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr_dim(cfg.rope_beta_fast)), 0)
    high = min(math.ceil(corr_dim(cfg.rope_beta_slow)), d - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    # ramp=0: keep θ_i (extrapolate, high frequencies); ramp=1: θ_i/s (interpolate, low frequencies)
    return inv / cfg.rope_factor * ramp + inv * (1 - ramp)


class RotaryEmbedding(KeepFP32Buffers):
    fp32_buffers = ("inv_freq",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.attention_factor = cfg.rope_attention_factor

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, S) -> cos, sin (B, S, d_r/2) in fp32."""
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        return freqs.cos() * self.attention_factor, freqs.sin() * self.attention_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, S, H, d_r) interleaved pairs; cos/sin (B, S, d_r/2) -> rotated, de-interleaved, x.dtype.

    The math lives in kernels.rope.rope_ref, the oracle of the fused RoPE + q/k assembly kernels
    (`rope_q` / `rope_k`, which the training path of MLA calls instead).
    """
    return rope_ref(x, cos, sin)

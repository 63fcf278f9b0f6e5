"""Pre-norm decoder block: h += MLA(norm(h)); h += FFN(norm(h)) with FFN dense or MoE."""

from __future__ import annotations

from torch import nn

from .attention import MLA
from .config import ModelConfig
from .mlp import MLP
from .moe import MoE
from .norm import RMSNorm


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, moe: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if moe else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, h, cos, sin, mask=None, cache=None, start: int = 0):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, cache, start)
        return h + self.mlp(self.post_attention_layernorm(h))

"""Multi-Token Prediction modules (V3 report §2.2, ARCHITECTURE.md §5).

Module k predicts token i+k+1 from h_i^{k-1} and the embedding of token i+k:
h' = eh_proj([enorm(Emb(t_{i+k})) ; hnorm(h^{k-1}_i)])   (embedding FIRST, as in the released weights)
h^k = Block_k(h') with the original positions;  logits = lm_head(shared_head_norm(h^k)).
Embedding and output head are shared with the main model. h^0 is the main model's post-norm
hidden (what HF and the serving engines feed).
"""

from __future__ import annotations

import torch
from torch import nn

from .block import DecoderLayer
from .config import ModelConfig
from .norm import RMSNorm


class MTPModule(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.enorm = RMSNorm(d, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.block = DecoderLayer(cfg, layer_idx, moe=cfg.n_routed_experts > 0)
        self.shared_head_norm = RMSNorm(d, cfg.rms_norm_eps)

    def forward(self, h_prev: torch.Tensor, emb_next: torch.Tensor, cos, sin, mask=None) -> torch.Tensor:
        """h_prev (B,S',d), emb_next (B,S',d) embeddings of the tokens k ahead -> normed h^k (B,S',d)."""
        h = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h_prev)], dim=-1))
        return self.shared_head_norm(self.block(h, cos, sin, mask))

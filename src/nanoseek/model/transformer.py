"""DeepSeek-V3: embedding -> N decoder layers (first k dense, rest MoE) -> norm -> lm_head, + MTP.

Module names equal HF `DeepseekV3ForCausalLM`'s in-memory names (model.layers.{i}.self_attn...,
mlp.experts.gate_up_proj), so the HF adapter only renames MTP modules and splits experts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .attention import document_causal_mask, padded_causal_mask
from .block import DecoderLayer
from .config import ModelConfig
from .flex import document_block_mask, flex_available
from .moe import GroupedExperts, Gate, MoE
from .mtp import MTPModule
from .norm import RMSNorm
from .rope import RotaryEmbedding


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # (B, S, V) or None when skipped (the trainer's chunked loss)
    hidden: torch.Tensor  # (B, S, d) post-final-norm hidden
    mtp_hidden: list[torch.Tensor] = field(default_factory=list)  # depth k -> (B, S-k, d), normed
    router_counts: torch.Tensor | None = None  # (n_moe_layers, E) tokens per expert this forward
    balance_loss: torch.Tensor | None = None  # Σ over MoE layers of the sequence-wise balance loss


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, cfg.is_moe_layer(i)) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg)


class DeepSeekV3(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.mtp = nn.ModuleList(MTPModule(cfg, cfg.num_hidden_layers + k) for k in range(cfg.num_nextn_predict_layers))
        self.use_flex = True  # packed (doc_ids) batches use FlexAttention on GPU; False = dense mask + SDPA
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    # ---- init ---------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, GroupedExperts):
                nn.init.normal_(m.gate_up_proj, std=std)
                nn.init.normal_(m.down_proj, std=std)
            elif isinstance(m, Gate):
                nn.init.normal_(m.weight, std=std)
                m.e_score_correction_bias.zero_()
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    # ---- forward ------------------------------------------------------------------------
    def forward(self, input_ids, position_ids=None, doc_ids=None, attention_mask=None,
                cache=None, start: int = 0, compute_logits: bool = True, mtp: bool = False) -> ModelOutput:
        """input_ids (B,S).

        position_ids (B,S): defaults to start..start+S-1 (packed data restarts them per document).
        doc_ids (B,S): tokens attend only within their document (block-diagonal causal mask).
        attention_mask (B,T) 1 = real token, for left-padded batches (T = start + S with a cache).
        cache: a LatentCache; start: where these tokens go in it.
        mtp: also run the MTP modules (training; needs S > D).
        """
        B, S = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(start, start + S, device=input_ids.device).expand(B, S)
        mask = self._mask(doc_ids, attention_mask, S)
        cos, sin = self.model.rotary(position_ids)
        h = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            h = layer(h, cos, sin, mask, cache, start)
        h = self.model.norm(h)
        out = ModelOutput(logits=self.lm_head(h) if compute_logits else None, hidden=h)
        if mtp and self.mtp:
            out.mtp_hidden = self.mtp_forward(h, input_ids, position_ids, doc_ids)
        self._collect_router_stats(out)
        return out

    def _mask(self, doc_ids, attention_mask, S):
        if doc_ids is not None:
            if self.use_flex and flex_available(doc_ids.device):
                return document_block_mask(doc_ids)  # FlexAttention BlockMask (GPU)
            return document_causal_mask(doc_ids)
        if attention_mask is not None:
            return padded_causal_mask(attention_mask.bool(), S)
        return None  # plain causal: SDPA's is_causal fast path

    def mtp_forward(self, h, input_ids, position_ids, doc_ids=None) -> list[torch.Tensor]:
        """Depth-k hidden states. Module k sees positions i < S-k: h^{k-1}_i and token i+k.

        Returns [h^1 (B,S-1,d), h^2 (B,S-2,d), ...]; h^k_i predicts token i+k+1.
        """
        outs, S0 = [], h.shape[1]
        for k, module in enumerate(self.mtp, start=1):
            L = S0 - k
            cos, sin = self.model.rotary(position_ids[:, :L])  # original positions, not shifted
            mask = self._mask(doc_ids[:, :L], None, L) if doc_ids is not None else None
            h = module(h[:, :L], self.model.embed_tokens(input_ids[:, k: k + L]), cos, sin, mask)
            outs.append(h)
        return outs

    def _collect_router_stats(self, out: ModelOutput) -> None:
        """Per-MoE-layer loads of this forward; zeros for MTP layers that did not run."""
        moes = self.moe_layers()
        if not moes:
            return
        E = self.config.n_routed_experts
        ran = [m for m in moes if m.last_counts is not None]
        dev = ran[0].last_counts.device if ran else out.hidden.device
        out.router_counts = torch.stack([m.last_counts if m.last_counts is not None else torch.zeros(E, dtype=torch.long, device=dev) for m in moes])
        if self.training and ran:
            out.balance_loss = sum(m.last_balance for m in ran)
        for m in moes:  # never report stale statistics from an earlier forward
            m.last_counts = m.last_balance = None

    # ---- generation -----------------------------------------------------------------------
    def generate(self, prompts, **kw) -> list[list[int]]:
        """Batched sampling with the latent cache; see `nanoseek.model.generate.generate`."""
        from .generate import generate

        return generate(self, prompts, **kw)

    # ---- Hugging Face checkpoints ---------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device="cpu") -> "DeepSeekV3":
        from .hf import from_pretrained

        return from_pretrained(path, dtype=dtype, device=device)

    def save_pretrained(self, path, **kw):
        from .hf import save_pretrained

        return save_pretrained(self, path, **kw)

    # ---- bookkeeping ----------------------------------------------------------------------
    def moe_layers(self) -> list[MoE]:
        """Main-model MoE layers then MTP MoE layers, in router_counts order."""
        if not hasattr(self, "_moes"):
            self._moes = [m for m in self.modules() if isinstance(m, MoE)]
        return self._moes

    def num_params(self, active: bool = False) -> int:
        """Total parameters, or those used per token (K of N routed experts)."""
        n = sum(p.numel() for p in self.parameters())
        if active:
            cfg = self.config
            for m in self.moe_layers():
                e = m.experts
                n -= (e.gate_up_proj.numel() + e.down_proj.numel()) * (1 - cfg.num_experts_per_tok / cfg.n_routed_experts)
        return int(n)

    def set_impl(self, attention: str | None = None, experts: str | None = None) -> "DeepSeekV3":
        """Switch between fast ('sdpa', 'grouped') and reference ('eager', 'loop') paths."""
        for m in self.modules():
            if attention and hasattr(m, "impl") and m.__class__.__name__ == "MLA":
                m.impl = attention
            if experts and isinstance(m, GroupedExperts):
                m.impl = experts
        return self

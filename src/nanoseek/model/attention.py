"""Multi-head Latent Attention (ARCHITECTURE.md §3; V2 report §2.1).

Shapes: B batch, S query length, T key length, H heads, dn = qk_nope_head_dim,
dr = qk_rope_head_dim, dv = v_head_dim, dc = kv_lora_rank.

Two ways to compute the same attention:
- naive (training / prefill): expand the latent through kv_b_proj into per-head keys and values,
  then `F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU) or the eager
  reference `attention_ref`; without a cache (`dense`) RoPE is fused into the q / k assembly;
- absorbed (decode): fold W_UK into the query and W_UV into the output so scores and outputs are
  taken directly against the cached latent c_kv (dc) and the shared rope key k_pe (dr): one SDPA
  call with a single shared KV head of dim dc+dr (MQA). The generation step runs it with static
  shapes (whole cache buffer + key mask) so it can be captured in a CUDA graph (model/generate.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.rope import rope_k, rope_q
from .config import ModelConfig
from .norm import RMSNorm
from .rope import apply_rope


def attention_ref(q, k, v, mask, scale):
    """Eager reference. q (B,H,S,D), k (B,H,T,D), v (B,H,T,Dv), mask (B,1,S,T) bool or None=causal."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B,H,S,T), fp32 softmax
    if mask is None:
        S, T = scores.shape[-2:]
        mask = torch.ones(S, T, dtype=torch.bool, device=q.device).tril(T - S)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(-1), v.float()).to(q.dtype)


def attention_sdpa(q, k, v, mask, scale):
    """Fast path: SDPA picks flash / cuDNN / memory-efficient kernels. qk dim may differ from v dim."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[-2] == k.shape[-2], scale=scale)
    if not isinstance(mask, torch.Tensor):  # a FlexAttention BlockMask (packed documents on GPU)
        from .flex import flex_attention

        return flex_attention(q, k, v, mask, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids (B,S) -> (B,1,S,S) bool: causal and within the same document (block-diagonal causal)."""
    S = doc_ids.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool, device=doc_ids.device).tril()
    return (causal & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]


def padded_causal_mask(key_valid: torch.Tensor, q_len: int) -> torch.Tensor:
    """key_valid (B,T) bool -> (B,1,q_len,T): the last q_len positions attend causally to valid keys.

    A query always sees itself so rows of padding tokens never become all -inf (NaN softmax).
    """
    T = key_valid.shape[1]
    causal = torch.ones(q_len, T, dtype=torch.bool, device=key_valid.device).tril(T - q_len)
    self_ = torch.zeros(q_len, T, dtype=torch.bool, device=key_valid.device)
    self_[torch.arange(q_len), torch.arange(T - q_len, T)] = True
    return ((causal & key_valid[:, None, :]) | self_)[:, None]


class MLA(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        d, H = cfg.hidden_size, cfg.num_attention_heads
        self.n_heads, self.dn, self.dr, self.dv, self.dc = H, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        qk = cfg.qk_head_dim
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(d, H * qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=cfg.attention_bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, self.dc + self.dr, bias=cfg.attention_bias)
        self.kv_a_layernorm = RMSNorm(self.dc, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.dc, H * (self.dn + self.dv), bias=False)
        self.o_proj = nn.Linear(H * self.dv, d, bias=cfg.attention_bias)
        self.scale = cfg.softmax_scale
        self.impl = "sdpa"  # "sdpa" | "eager"

    # ---- projections -------------------------------------------------------------------
    def q_heads(self, x):
        """x (B,S,d) -> q (B,S,H,dn+dr) = [q_nope | q_pe] per head, before RoPE."""
        B, S, _ = x.shape
        q = self.q_proj(x) if self.cfg.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        return q.view(B, S, self.n_heads, self.dn + self.dr)

    def kv_latent(self, x):
        """x (B,S,d) -> c_kv (B,S,dc) after kv norm, k_pe (B,S,dr) before RoPE (a strided view)."""
        c, k_pe = self.kv_a_proj_with_mqa(x).split([self.dc, self.dr], dim=-1)
        return self.kv_a_layernorm(c), k_pe

    def query(self, x, cos, sin):
        """x (B,S,d) -> q_nope (B,S,H,dn), q_pe (B,S,H,dr) with RoPE applied."""
        q_nope, q_pe = self.q_heads(x).split([self.dn, self.dr], dim=-1)
        return q_nope, apply_rope(q_pe, cos, sin)

    def latent(self, x, cos, sin):
        """x (B,S,d) -> c_kv (B,S,dc) after kv norm, k_pe (B,S,dr) after RoPE: what the cache holds."""
        c_kv, k_pe = self.kv_latent(x)
        return c_kv, apply_rope(k_pe[:, :, None], cos, sin)[:, :, 0]

    def _w_kvb(self):
        # kv_b_proj rows are per head: (H, dn + dv, dc) with k_nope rows first, then v
        return self.kv_b_proj.weight.view(self.n_heads, self.dn + self.dv, self.dc)

    # ---- attention ---------------------------------------------------------------------
    def forward(self, x, cos, sin, mask=None, cache=None, start: int = 0):
        """x (B,S,d); mask (B,1,S,T) bool or None (plain causal); cache: LatentCache or None.

        With a cache, one token per row (S == 1) takes the absorbed path. In the cache's static
        mode (`cache.static`, the CUDA-graph decode step) the token is written at the device index
        `cache.write_pos` and attends over the whole buffer under `cache.key_mask` (B,max_len).
        """
        if cache is None:
            return self.o_proj(self.dense(x, cos, sin, mask))
        q_nope, q_pe = self.query(x, cos, sin)
        c_kv, k_pe = self.latent(x, cos, sin)
        kv = cache.update(self.layer_idx, c_kv, k_pe, start)  # (B,T,dc+dr) = [c_kv | k_pe]
        if x.shape[1] == 1:
            if cache.static:
                mask = cache.key_mask[:, None, None]  # (B,1,1,max_len): written, non-padding keys
            return self.o_proj(self.absorbed(q_nope, q_pe, kv, mask))
        c_kv, k_pe = kv.split([self.dc, self.dr], dim=-1)
        return self.o_proj(self.naive(q_nope, q_pe, c_kv, k_pe, mask))

    def dense(self, x, cos, sin, mask):
        """The naive path without a cache (training, cache-less prefill). RoPE is applied while
        q and k are assembled (`kernels.rope`: one fused pass each on CUDA, else rotate + cat).
        Returns (B,S,H*dv)."""
        B, S, _ = x.shape
        q = rope_q(self.q_heads(x), cos, sin, self.dn)  # (B,S,H,dn+dr)
        c_kv, k_pe = self.kv_latent(x)
        k_nope, v = self.kv_b_proj(c_kv).view(B, S, self.n_heads, self.dn + self.dv).split([self.dn, self.dv], dim=-1)
        k = rope_k(k_nope, k_pe, cos, sin)  # (B,S,H,dn+dr), k_pe shared by the heads
        return self._attend(q, k, v, mask)

    def naive(self, q_nope, q_pe, c_kv, k_pe, mask):
        """Expand the latent into per-head K (dn+dr) and V (dv), then attend. Returns (B,S,H*dv).
        q_pe, k_pe already rotated (k_pe from the cache)."""
        B, S, H, _ = q_nope.shape
        T = c_kv.shape[1]
        k_nope, v = self.kv_b_proj(c_kv).view(B, T, H, self.dn + self.dv).split([self.dn, self.dv], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)  # (B,S,H,dn+dr)
        k = torch.cat([k_nope, k_pe[:, :, None].expand(B, T, H, self.dr)], dim=-1)
        return self._attend(q, k, v, mask)

    def _attend(self, q, k, v, mask):
        """q (B,S,H,dn+dr), k (B,T,H,dn+dr), v (B,T,H,dv) -> (B,S,H*dv)."""
        B, S, H, _ = q.shape
        attn = attention_ref if self.impl == "eager" else attention_sdpa
        o = attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, self.scale)  # (B,H,S,dv)
        return o.transpose(1, 2).reshape(B, S, H * self.dv)

    def absorbed(self, q_nope, q_pe, kv, mask):
        """Attend against the latent cache directly (ARCHITECTURE.md §3.3). Returns (B,S,H*dv).

        kv (B,T,dc+dr) = [c_kv | k_pe]; mask (B,1,S,T) / (B,1,1,T) bool or None (all keys).
        q̃ = W_UKᵀ q_nope (B,S,H,dc); score = [q̃ | q_pe]·[c_kv | k_pe]·scale (the naive path's
        scale); out = W_UV (P c_kv). As SDPA this is one-KV-head attention (MQA) with the S·H
        (token, head) pairs as query rows, qk dim dc+dr and value = the c_kv part of the same
        buffer: no per-head K/V, no copy or fp32 upcast of the cache (SDPA keeps an fp32 softmax).
        """
        B, S, H, _ = q_nope.shape
        T = kv.shape[1]
        w = self._w_kvb()
        q_abs = torch.einsum("bshd,hdc->bshc", q_nope, w[:, : self.dn])
        q = torch.cat([q_abs, q_pe], dim=-1).reshape(B, 1, S * H, self.dc + self.dr)
        if mask is not None:  # (B,1,S|1,T) -> (B,1,S*H,T), a view when S == 1
            mask = mask[:, :, :, None].expand(B, 1, S, H, T).reshape(B, 1, S * H, T)
        o_lat = F.scaled_dot_product_attention(q, kv[:, None], kv[:, None, :, : self.dc], attn_mask=mask, scale=self.scale)
        o = torch.einsum("bshc,hdc->bshd", o_lat.view(B, S, H, self.dc), w[:, self.dn:])  # (B,S,H,dv)
        return o.reshape(B, S, H * self.dv)

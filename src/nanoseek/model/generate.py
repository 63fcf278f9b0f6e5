"""Generation with the compressed MLA cache (ARCHITECTURE.md §3.3).

The cache holds, per layer and token, only the normalised latent c_kv (kv_lora_rank) and the
RoPE'd shared key k_pe (qk_rope_head_dim): (512 + 64) × 2 bytes per layer in bf16 for V3, against
128 × (192 + 128) elements for a per-head K/V cache. Decoding uses the absorbed projections.
Prompts of different lengths are left-padded; padded keys are masked and positions start at 0
at each prompt's first real token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .config import ModelConfig


class LatentCache:
    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> None:
        n = cfg.num_hidden_layers
        self.c_kv = torch.zeros(n, batch, max_len, cfg.kv_lora_rank, device=device, dtype=dtype)
        self.k_pe = torch.zeros(n, batch, max_len, cfg.qk_rope_head_dim, device=device, dtype=dtype)

    def update(self, layer: int, c_kv: torch.Tensor, k_pe: torch.Tensor, start: int):
        """Write (B,s,dc) / (B,s,dr) at [start, start+s) and return the filled prefix (B,start+s,·)."""
        end = start + c_kv.shape[1]
        self.c_kv[layer, :, start:end] = c_kv
        self.k_pe[layer, :, start:end] = k_pe
        return self.c_kv[layer, :, :end], self.k_pe[layer, :, :end]

    @staticmethod
    def bytes_per_token(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> int:
        """Cache bytes per token over all layers: n_layers × (kv_lora_rank + qk_rope_head_dim) × elem."""
        return cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * dtype.itemsize

    @staticmethod
    def mha_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> int:
        """What a per-head K/V cache of the same model would hold (for comparison)."""
        return cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * dtype.itemsize


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0
    seed: int | None = None


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator=None) -> torch.Tensor:
    """logits (B,V) -> next token ids (B,). Greedy at temperature 0; else top-k, then nucleus."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B,P) left-padded with pad_id, valid (B,P) bool."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, P - len(p):] = torch.as_tensor(list(p))
            valid[i, P - len(p):] = True
    return ids.to(device), valid.to(device)


@torch.inference_mode()
def generate(model, prompts: Sequence[Sequence[int]], cfg: SamplingConfig | None = None,
             on_token: Callable[[torch.Tensor, torch.Tensor], None] | None = None, **kw) -> list[list[int]]:
    """Sample continuations for a batch of token-id prompts; returns the new tokens per prompt
    (stop token excluded). `on_token(next_ids (B,), alive (B,))` is called after each step (streaming).
    """
    cfg = cfg or SamplingConfig(**kw)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token (e.g. the BOS token)")
    dev = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    ids, valid = left_pad(prompts, cfg.pad_id, dev)
    B, P = ids.shape
    cache = LatentCache(model.config, B, P + cfg.max_new_tokens, dev, dtype)
    key_valid = torch.ones(B, P + cfg.max_new_tokens, dtype=torch.bool, device=dev)
    key_valid[:, :P] = valid
    padded = not bool(valid.all())
    pos = (valid.long().cumsum(-1) - 1).clamp(min=0)  # (B,P)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed) if cfg.seed is not None else None
    stop = torch.tensor(cfg.stop_tokens or [-1], device=dev)

    out = model(ids, position_ids=pos, attention_mask=key_valid[:, :P] if padded else None, cache=cache, start=0, compute_logits=False)
    logits = model.lm_head(out.hidden[:, -1])
    last_pos = pos[:, -1:]
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    tokens = []
    for t in range(cfg.max_new_tokens):
        nxt = sample_next(logits, cfg.temperature, cfg.top_k, cfg.top_p, gen)
        nxt = torch.where(alive, nxt, torch.full_like(nxt, cfg.pad_id))
        tokens.append(nxt)
        alive = alive & ~torch.isin(nxt, stop)
        if on_token is not None:
            on_token(nxt, alive)
        if t == cfg.max_new_tokens - 1 or not bool(alive.any()):
            break
        last_pos = last_pos + 1
        out = model(nxt[:, None], position_ids=last_pos, attention_mask=key_valid[:, : P + t + 1] if padded else None,
                    cache=cache, start=P + t, compute_logits=False)
        logits = model.lm_head(out.hidden[:, -1])
    return _trim(torch.stack(tokens, 1).tolist(), set(cfg.stop_tokens))


def _trim(rows: list[list[int]], stops: set[int]) -> list[list[int]]:
    out = []
    for r in rows:
        cut = next((i for i, t in enumerate(r) if t in stops), len(r))
        out.append(r[:cut])
    return out

"""Tiny random HF DeepseekV3ForCausalLM models for parity tests (ARCHITECTURE.md §10)."""

from __future__ import annotations

import torch

BASE = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=16,
    num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
    q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=24,
    n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
    routed_scaling_factor=2.5, norm_topk_prob=True, initializer_range=0.1, max_position_embeddings=2560,
    num_nextn_predict_layers=0,
    rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 40.0, "original_max_position_embeddings": 64,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
)

VARIANTS = {
    "qlora_yarn_groups": {},
    "no_qlora": dict(q_lora_rank=None),
    "default_rope_one_group": dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4}, n_group=1, topk_group=1),
    "all_moe_no_norm": dict(first_k_dense_replace=0, norm_topk_prob=False, routed_scaling_factor=1.0),
    "two_dense_mscale": dict(first_k_dense_replace=2, num_hidden_layers=4, n_group=8, topk_group=3, n_shared_experts=2,
                             rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 8.0, "original_max_position_embeddings": 32,
                                              "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}),
}


def hf_model(seed: int = 0, **overrides):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(seed)
    kw = {**BASE, **overrides}
    m = DeepseekV3ForCausalLM(DeepseekV3Config(**kw, attn_implementation="eager")).eval()
    randomize_(m, seed)
    return m


@torch.no_grad()
def randomize_(m, seed: int = 0) -> None:
    """Make what init leaves trivial visible: non-zero router bias, norms away from 1."""
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in m.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    for name, b in m.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.05 * torch.randn(b.shape, generator=g))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

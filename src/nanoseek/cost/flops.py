"""Parameters and FLOPs per token from the config alone (no model is built).

Conventions (EFFICIENCY.md §3: torchtitan, Megatron; Kaplan et al. 2020 §2.1):
- A matmul with a (n_in, n_out) weight costs 2·n_in·n_out FLOPs per token forward (multiply + add);
  backward costs 2× forward (grad wrt input and grad wrt weight), so training = 3× forward.
- Only matmuls count: norms, softmax, SwiGLU, RoPE and the embedding lookup are ignored (<1%).
- MoE: only the K routed experts a token is sent to count, plus shared experts and the router GEMM.
- Attention core per head and layer: QKᵀ 2·d_qk·ctx + PV 2·d_v·ctx, with ctx the keys a query sees:
  S for full attention, (S+1)/2 on average under a causal mask (what a causal flash kernel skips).
- MTP depth k runs on S-k positions, and its logits reuse the shared lm_head (V3 report §2.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from nanoseek.model.config import ModelConfig


# ---------------------------------------------------------------------------- a dense reference
@dataclass(frozen=True)
class DenseConfig:
    """A Llama-style dense GQA transformer (SwiGLU FFN), only what the accounting needs."""

    name: str
    num_layers: int
    hidden_size: int
    ffn_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# Llama 3.1 405B: "The Llama 3 Herd of Models" (arXiv 2407.21783) Table 3; HF config.json of
# meta-llama/Llama-3.1-405B. Trained on 15.6T tokens at 8K context; 30.84M H100-80GB GPU-hours
# (model card, "Training Time (GPU hours)").
LLAMA31_405B = DenseConfig("Llama-3.1-405B", num_layers=126, hidden_size=16384, ffn_size=53248,
                           num_heads=128, num_kv_heads=8, vocab_size=128256)


# ---------------------------------------------------------------------------- parameter counts
@dataclass(frozen=True)
class ParamCounts:
    total: int  # every parameter (tied weights once), MTP included when the config has it
    active: int  # used per token: K of N routed experts (embedding included, like num_params)
    embedding: int
    lm_head: int  # 0 when tied
    routed_experts: int  # all routed expert weights (main + MTP)
    mtp: int  # the MTP modules (they share embedding and lm_head with the main model)

    @property
    def total_no_mtp(self) -> int:
        return self.total - self.mtp


def _attn_params(cfg: ModelConfig) -> tuple[int, int]:
    """(matmul weights, other params: norms and biases) of one MLA layer."""
    d, H, qk = cfg.hidden_size, cfg.num_attention_heads, cfg.qk_head_dim
    dc, dr, b = cfg.kv_lora_rank, cfg.qk_rope_head_dim, int(cfg.attention_bias)
    if cfg.q_lora_rank is None:
        q_mm, q_other = d * H * qk, 0
    else:
        rq = cfg.q_lora_rank
        q_mm, q_other = d * rq + rq * H * qk, rq * (1 + b)  # q_a_layernorm (+ q_a bias)
    mm = q_mm + d * (dc + dr) + dc * H * (cfg.qk_nope_head_dim + cfg.v_head_dim) + H * cfg.v_head_dim * d
    other = q_other + dc + b * (dc + dr + d)  # kv_a_layernorm (+ kv_a and o biases)
    return mm, other


def _ffn_params(cfg: ModelConfig, moe: bool) -> dict[str, int]:
    """Matmul weights of one FFN by role; routed experts all N of them."""
    d = cfg.hidden_size
    if not moe:
        return {"dense": 3 * d * cfg.intermediate_size}
    I = cfg.moe_intermediate_size
    return {"routed": cfg.n_routed_experts * 3 * d * I, "shared": 3 * d * I * cfg.n_shared_experts,
            "router": cfg.n_routed_experts * d}


def _layer_params(cfg: ModelConfig, moe: bool) -> tuple[int, int]:
    """(total, routed-expert part) of one decoder layer, its two RMSNorms included."""
    mm, other = _attn_params(cfg)
    ffn = _ffn_params(cfg, moe)
    return mm + other + sum(ffn.values()) + 2 * cfg.hidden_size, ffn.get("routed", 0)


def _mtp_params(cfg: ModelConfig) -> tuple[int, int]:
    """One MTP module: enorm, hnorm, eh_proj (2d -> d), a block, shared_head_norm."""
    d = cfg.hidden_size
    block, routed = _layer_params(cfg, moe=cfg.n_routed_experts > 0)
    return 3 * d + 2 * d * d + block, routed


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Analytic counts that equal `DeepSeekV3(cfg).num_params()` / `num_params(active=True)`."""
    d, V = cfg.hidden_size, cfg.vocab_size
    emb, head = V * d, 0 if cfg.tie_word_embeddings else V * d
    total, routed = emb + head + d, 0  # + final norm
    for i in range(cfg.num_hidden_layers):
        n, r = _layer_params(cfg, cfg.is_moe_layer(i))
        total, routed = total + n, routed + r
    mtp_n, mtp_r = _mtp_params(cfg)
    D = cfg.num_nextn_predict_layers
    total, routed = total + D * mtp_n, routed + D * mtp_r
    inactive = routed * (1 - cfg.num_experts_per_tok / cfg.n_routed_experts) if cfg.n_routed_experts else 0
    return ParamCounts(total, int(total - inactive), emb, head, routed, D * mtp_n)


def dense_param_counts(cfg: DenseConfig) -> ParamCounts:
    d, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
    layer = 2 * d * d + 2 * d * kv + 3 * d * cfg.ffn_size + 2 * d  # q, o, k, v, SwiGLU, 2 norms
    emb, head = cfg.vocab_size * d, 0 if cfg.tie_embeddings else cfg.vocab_size * d
    total = cfg.num_layers * layer + emb + head + d
    return ParamCounts(total, total, emb, head, 0, 0)


# ---------------------------------------------------------------------------- FLOPs per token
@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward FLOPs per token by component; `bwd` = 2·fwd, `total` = fwd + bwd (training)."""

    attn_proj: float  # MLA / GQA projections (q, kv down/up, o)
    attn_core: float  # QKᵀ and PV
    dense_mlp: float  # the first_k_dense_replace SwiGLU layers
    routed_experts: float  # K active routed experts only
    shared_experts: float
    router: float  # gate GEMM d -> E
    lm_head: float
    mtp: float  # MTP modules (eh_proj + block + attention + lm_head), ×(S-k)/S
    seq_len: int
    causal: bool

    COMPONENTS = ("attn_proj", "attn_core", "dense_mlp", "routed_experts", "shared_experts", "router", "lm_head", "mtp")

    def components(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.COMPONENTS}

    @property
    def fwd(self) -> float:
        return sum(self.components().values())

    @property
    def bwd(self) -> float:
        return 2 * self.fwd

    @property
    def total(self) -> float:
        return 3 * self.fwd

    @property
    def fwd_no_attn(self) -> float:
        """Forward without the attention core: 2·(active matmul params), the '6N' part / 3."""
        return self.fwd - self.attn_core


def _ctx(q_len: int, causal: bool) -> float:
    """Average number of keys a query attends to over a sequence of q_len."""
    return (q_len + 1) / 2 if causal else float(q_len)


def _mla_core(cfg: ModelConfig, q_len: int, causal: bool) -> float:
    return 2 * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * _ctx(q_len, causal)


def _ffn_flops(cfg: ModelConfig, moe: bool) -> dict[str, float]:
    f = _ffn_params(cfg, moe)
    if "routed" in f:
        f["routed"] = f["routed"] * cfg.num_experts_per_tok / cfg.n_routed_experts
    return {k: 2.0 * v for k, v in f.items()}


def flops_per_token(cfg: ModelConfig | DenseConfig, seq_len: int, mtp: bool = True, causal: bool = True) -> FlopsBreakdown:
    """Forward FLOPs per token of a sequence of seq_len (training shapes, no KV cache)."""
    if isinstance(cfg, DenseConfig):
        return _dense_flops(cfg, seq_len, causal)
    S, d = seq_len, cfg.hidden_size
    proj = 2.0 * _attn_params(cfg)[0]
    acc = dict.fromkeys(FlopsBreakdown.COMPONENTS, 0.0)
    role = {"dense": "dense_mlp", "routed": "routed_experts", "shared": "shared_experts", "router": "router"}
    for i in range(cfg.num_hidden_layers):
        acc["attn_proj"] += proj
        acc["attn_core"] += _mla_core(cfg, S, causal)
        for k, v in _ffn_flops(cfg, cfg.is_moe_layer(i)).items():
            acc[role[k]] += v
    acc["lm_head"] = 2.0 * d * cfg.vocab_size
    if mtp:
        block = proj + sum(_ffn_flops(cfg, cfg.n_routed_experts > 0).values()) + 2.0 * 2 * d * d + acc["lm_head"]
        for k in range(1, min(cfg.num_nextn_predict_layers, S - 1) + 1):
            acc["mtp"] += (S - k) / S * (block + _mla_core(cfg, S - k, causal))
    return FlopsBreakdown(**acc, seq_len=S, causal=causal)


def _dense_flops(cfg: DenseConfig, S: int, causal: bool) -> FlopsBreakdown:
    d, hd, L = cfg.hidden_size, cfg.head_dim, cfg.num_layers
    proj = 2.0 * (2 * d * d + 2 * d * cfg.num_kv_heads * hd)
    core = 2.0 * cfg.num_heads * 2 * hd * _ctx(S, causal)  # GQA shares K/V, not the FLOPs
    return FlopsBreakdown(L * proj, L * core, L * 2.0 * 3 * d * cfg.ffn_size, 0.0, 0.0, 0.0,
                          2.0 * d * cfg.vocab_size, 0.0, seq_len=S, causal=causal)


def six_n(active_params: float) -> float:
    """The '6N' training FLOPs per token (Kaplan 2020) used by the V3 MFU anchor (6·37e9)."""
    return 6.0 * active_params


def training_flops(cfg: ModelConfig | DenseConfig, tokens: float, seq_len: int, mtp: bool = True) -> float:
    """Total training FLOPs for `tokens` tokens at seq_len, causal, attention included."""
    return tokens * flops_per_token(cfg, seq_len, mtp=mtp).total


__all__ = ["DenseConfig", "LLAMA31_405B", "ParamCounts", "param_counts", "dense_param_counts",
           "FlopsBreakdown", "flops_per_token", "six_n", "training_flops"]

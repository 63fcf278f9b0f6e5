"""GPU-hours, dollars and memory per GPU; the DeepSeek-V3 cost table rebuilt from first principles.

GPU-hours = tokens × FLOPs/token / (MFU × peak × 3600). Run backwards on a reported GPU-hour figure
it gives the MFU that figure implies; that MFU then prices the stages the report does not break down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nanoseek.model.config import ModelConfig

from .flops import LLAMA31_405B, flops_per_token, param_counts, six_n
from .gpus import GPUS

HOUR = 3600.0


# ---------------------------------------------------------------------------- time and money
def gpu_hours(tokens: float, flops_per_token: float, peak: float, mfu: float) -> float:
    """GPU-hours to train `tokens` at `mfu` of a `peak` FLOP/s GPU."""
    return tokens * flops_per_token / (mfu * peak * HOUR)


def implied_mfu(tokens: float, flops_per_token: float, hours: float, peak: float) -> float:
    """The MFU a reported GPU-hour figure implies (the inverse of gpu_hours)."""
    return tokens * flops_per_token / (hours * HOUR * peak)


def dollars(hours: float, price: float = 2.0) -> float:
    """Rental cost at `price` $ per GPU-hour (the V3 report assumes $2 for an H800)."""
    return hours * price


# ---------------------------------------------------------------------------- memory per GPU
@dataclass(frozen=True)
class Layout:
    """A training layout: GPUs = dp × pp (no TP, as in V3 §3.2); EP lives inside the DP group.

    Experts are split over ep ranks, so each expert has dp/ep data-parallel replicas.
    zero: 0 replicate all, 1 shard optimizer states (ZeRO-1, V3), 2 also grads, 3 also params (FSDP).
    """

    dp: int = 1
    ep: int = 1
    pp: int = 1
    zero: int = 1
    micro_batch: int = 1  # sequences per micro-batch
    seq_len: int = 4096
    moments: str = "fp32"  # AdamW m, v dtype: "fp32" or "bf16" (V3 §3.3.3 keeps them in BF16)
    recompute: bool = False  # full activation checkpointing: keep only each layer's input

    def __post_init__(self) -> None:
        if min(self.dp, self.ep, self.pp, self.micro_batch, self.seq_len) < 1 or self.dp % self.ep:
            raise ValueError(f"bad layout {self}: sizes must be >= 1 and ep must divide dp")
        if self.zero not in (0, 1, 2, 3) or self.moments not in ("fp32", "bf16"):
            raise ValueError(f"bad layout {self}: zero in 0..3, moments 'fp32' or 'bf16'")

    @property
    def n_gpus(self) -> int:
        return self.dp * self.pp


# V3 §3.2: 2048 H800 = PP16 × DP128, EP64 over 8 nodes, ZeRO-1; BF16 AdamW moments (§3.3.3).
V3_LAYOUT = Layout(dp=128, ep=64, pp=16, zero=1, moments="bf16")


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU (the busiest pipeline stage, layers split evenly)."""

    params: float  # BF16 weights
    grads: float  # FP32 gradient accumulators (V3 §3.3.3)
    optimizer: float  # FP32 master weights + AdamW m, v
    activations: float  # rough: saved inputs of every matmul, flash attention (no S² scores)

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations


def _act_elems_per_token(cfg: ModelConfig, moe: bool) -> float:
    """Elements saved for backward by one layer per token, BF16 (no FP8 caching, no recompute)."""
    d, H, qk = cfg.hidden_size, cfg.num_attention_heads, cfg.qk_head_dim
    q = 2 * cfg.q_lora_rank + H * qk if cfg.q_lora_rank else H * qk  # q_a out, its norm, q
    kv = 2 * cfg.kv_lora_rank + cfg.qk_rope_head_dim + H * (cfg.qk_nope_head_dim + cfg.v_head_dim)
    attn = 2 * d + q + kv + H * qk + H * cfg.v_head_dim  # residual, normed x, ..., K, attention out
    if not moe:
        return attn + 2 * d + 3 * cfg.intermediate_size
    K, I = cfg.num_experts_per_tok, cfg.moe_intermediate_size
    # router in fp32 (x 2 elements) + scores; K dispatched copies: x, gate_up, act, out
    return attn + 2 * d + 2 * (d + cfg.n_routed_experts) + K * (2 * d + 3 * I) + 3 * I * cfg.n_shared_experts


def activation_bytes(cfg: ModelConfig, lay: Layout) -> float:
    """1F1B: the first stage holds pp micro-batches of its layers/pp (pp=1: one micro-batch)."""
    n_layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
    per_stage = math.ceil(n_layers / lay.pp)
    tokens = lay.micro_batch * lay.seq_len * lay.pp  # in flight on the first stage
    full = max(_act_elems_per_token(cfg, cfg.is_moe_layer(i)) for i in range(cfg.num_hidden_layers))
    if lay.recompute:  # layer inputs only, plus one layer's full set during its backward
        return 2.0 * (tokens * per_stage * cfg.hidden_size + lay.micro_batch * lay.seq_len * full)
    return 2.0 * tokens * per_stage * full


def memory_per_gpu(cfg: ModelConfig, lay: Layout) -> Memory:
    pc = param_counts(cfg)
    dense = (pc.total - pc.routed_experts) / lay.pp  # embedding/head counted as if spread evenly
    expert = pc.routed_experts / (lay.pp * lay.ep)
    edp = lay.dp // lay.ep  # replicas of each expert

    def held(level: int) -> float:  # elements of a state this GPU holds, sharded from ZeRO `level`
        return dense / lay.dp + expert / edp if lay.zero >= level else dense + expert

    moments = 2 * (4 if lay.moments == "fp32" else 2)
    return Memory(2 * held(3), 4 * held(2), (4 + moments) * held(1), activation_bytes(cfg, lay))


# ---------------------------------------------------------------------------- the V3 table
# V3 report Table 1 and §4 (also deepseek-ai/DeepSeek-V3 README): H800 GPU-hours by stage.
V3_REPORTED = {"pre-training": 2664e3, "context extension": 119e3, "post-training": 5e3}
V3_TOKENS, V3_SEQ, V3_ACTIVE = 14.8e12, 4096, 37e9  # 14.8T tokens at 4K; "37B activated"
# V3 report §4.3: two YaRN phases of 1000 steps: (sequence length, sequences per step, steps).
V3_CONTEXT_PHASES = ((32 * 1024, 1920, 1000), (128 * 1024, 480, 1000))
V3_GPU = GPUS["H800-SXM"]
# Llama 3.1 405B: 15.6T tokens at 8K (arXiv 2407.21783 §3.4); 30.84M H100-80GB GPU-hours (model card).
LLAMA_TOKENS, LLAMA_SEQ, LLAMA_REPORTED, LLAMA_GPU = 15.6e12, 8192, 30.84e6, GPUS["H100-SXM"]


@dataclass(frozen=True)
class CostRow:
    stage: str
    tokens: float | None
    seq_len: int | None
    flops: float | None  # training FLOPs, attention included
    gpu_hours: float | None  # computed at the implied MFU (None: not derivable from tokens)
    reported: float | None  # the report's GPU-hours (None: not given for this row)
    price: float = 2.0
    sub: bool = False  # a phase of the stage above: not counted again in the total

    @property
    def dollars(self) -> float | None:
        """The table's dollars: reported GPU-hours × price (computed ones where none is reported)."""
        h = self.reported if self.reported is not None else self.gpu_hours
        return None if h is None else dollars(h, self.price)


def v3_config() -> ModelConfig:
    return ModelConfig.preset("671b")


def v3_implied_mfu(method: str = "full", dtype: str = "bf16") -> float:
    """MFU implied by 2,664K GPU-hours: 'full' counts attention + MTP, '6n' is 6·37e9 (CLAIMS C12)."""
    fpt = six_n(V3_ACTIVE) if method == "6n" else flops_per_token(v3_config(), V3_SEQ).total
    return implied_mfu(V3_TOKENS, fpt, V3_REPORTED["pre-training"], getattr(V3_GPU, dtype))


def v3_cost_table(price: float = 2.0) -> list[CostRow]:
    """Pre-training, the two context-extension phases (and their sum), post-training, total."""
    cfg, peak, mfu = v3_config(), V3_GPU.bf16, v3_implied_mfu("full")

    def row(stage, tokens, seq, reported=None, sub=False):
        fl = tokens * flops_per_token(cfg, seq).total
        return CostRow(stage, tokens, seq, fl, fl / (mfu * peak * HOUR), reported, price, sub)

    pre = row("pre-training", V3_TOKENS, V3_SEQ, V3_REPORTED["pre-training"])
    phases = [row(f"context extension {seq // 1024}K", float(steps * n * seq), seq, sub=True) for seq, n, steps in V3_CONTEXT_PHASES]
    ctx = CostRow("context extension", sum(p.tokens for p in phases), None, sum(p.flops for p in phases),
                  sum(p.gpu_hours for p in phases), V3_REPORTED["context extension"], price)
    # Post-training (SFT 1.5M samples + RL) gives no token count: only the reported figure.
    post = CostRow("post-training", None, None, None, None, V3_REPORTED["post-training"], price)
    stages = [pre, ctx, post]
    total = CostRow("total", sum(r.tokens or 0 for r in stages), None, sum(r.flops or 0 for r in stages),
                    sum(r.gpu_hours if r.gpu_hours is not None else r.reported for r in stages),
                    sum(V3_REPORTED.values()), price)
    return [pre, *phases, ctx, post, total]


def llama_implied_mfu(method: str = "full") -> float:
    """MFU implied by Llama 3.1 405B's 30.84M H100 GPU-hours (same method as V3)."""
    fpt = flops_per_token(LLAMA31_405B, LLAMA_SEQ)
    f = six_n(fpt.fwd_no_attn / 2) if method == "6n" else fpt.total
    return implied_mfu(LLAMA_TOKENS, f, LLAMA_REPORTED, LLAMA_GPU.bf16)


def llama_cost_row(price: float = 2.0) -> CostRow:
    """Llama 3.1 405B pre-training, GPU-hours computed at V3's implied MFU (H100 peak = H800 peak)."""
    fl = LLAMA_TOKENS * flops_per_token(LLAMA31_405B, LLAMA_SEQ).total
    hours = gpu_hours(LLAMA_TOKENS, fl / LLAMA_TOKENS, LLAMA_GPU.bf16, v3_implied_mfu("full"))
    return CostRow("Llama 3.1 405B", LLAMA_TOKENS, LLAMA_SEQ, fl, hours, LLAMA_REPORTED, price)


def llama_v3_ratio() -> dict[str, float]:
    """Llama 3.1 405B over V3: reported GPU-hours (total/total) and training FLOPs (pre-training)."""
    v3 = v3_cost_table()
    return {"gpu_hours": LLAMA_REPORTED / v3[-1].reported, "flops": llama_cost_row().flops / v3[0].flops}

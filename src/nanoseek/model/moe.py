"""DeepSeekMoE: shared experts + fine-grained routed experts (ARCHITECTURE.md §4).

Routing (V3): s = sigmoid(u W_gᵀ) in fp32; experts are *selected* on s + b (b = the aux-loss-free
correction bias, fp32) under the group limit, and *weighted* by the unbiased s, renormalised,
× routed_scaling_factor. V2-style softmax/greedy routing is also supported.

Experts run without any loop over tokens: the T·K (token, expert) pairs are sorted by expert and
each weight matrix is applied to its contiguous slice with one grouped GEMM (`grouped_mm`).
`experts_loop` is the per-expert reference the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.permute import inverse_permutation, moe_permute, moe_unpermute
from ..kernels.swiglu import swiglu_cat
from .config import ModelConfig
from .fp32buffers import KeepFP32Buffers
from .mlp import MLP

_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


@dataclass
class RouterOutput:
    weights: torch.Tensor  # (T, K) fp32: combine weights (unbiased scores, normalised, scaled)
    indices: torch.Tensor  # (T, K) int64: selected experts
    scores: torch.Tensor  # (T, E) fp32: s, the unbiased affinities (for the balance loss)


class Gate(KeepFP32Buffers):
    fp32_buffers = ("e_score_correction_bias",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E = cfg.n_routed_experts
        self.weight = nn.Parameter(torch.empty(E, cfg.hidden_size))
        # Selection-only bias; a buffer (not trained by SGD) kept in fp32 whatever the model dtype.
        self.register_buffer("e_score_correction_bias", torch.zeros(E, dtype=torch.float32))

    def forward(self, u: torch.Tensor) -> RouterOutput:
        """u (T, d) -> RouterOutput. Router GEMM in fp32: bf16 logits flip top-k choices."""
        cfg = self.cfg
        logits = F.linear(u.float(), self.weight.float())  # (T, E)
        s = logits.sigmoid() if cfg.scoring_func == "sigmoid" else logits.softmax(-1)
        sel = s + self.e_score_correction_bias if cfg.topk_method == "noaux_tc" else s
        if cfg.n_group > 1 and cfg.topk_method != "greedy":
            sel = self._group_limit(sel)
        idx = sel.topk(cfg.num_experts_per_tok, dim=-1).indices  # (T, K)
        w = s.gather(1, idx)  # weights from the UNBIASED scores
        if cfg.norm_topk_prob and cfg.num_experts_per_tok > 1:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return RouterOutput(w * cfg.routed_scaling_factor, idx, s)

    def _group_limit(self, sel: torch.Tensor) -> torch.Tensor:
        """Keep the topk_group best groups; others -> -inf. Group score: top-2 sum (V3) or max (V2)."""
        cfg = self.cfg
        T, E = sel.shape
        g = sel.view(T, cfg.n_group, E // cfg.n_group)
        gscore = g.topk(2, dim=-1).values.sum(-1) if cfg.topk_method == "noaux_tc" else g.amax(-1)
        keep = torch.zeros_like(gscore, dtype=torch.bool).scatter_(1, gscore.topk(cfg.topk_group, dim=-1).indices, True)
        return g.masked_fill(~keep[..., None], float("-inf")).view(T, E)


class GroupedExperts(nn.Module):
    """E SwiGLU experts stored stacked, as HF 5.x keeps them in memory.

    gate_up_proj (E, 2I, d): gate rows first, then up. down_proj (E, d, I).
    """

    def __init__(self, n_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.n_experts, self.hidden = n_experts, hidden
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * hidden, dim))
        self.down_proj = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.impl = "grouped"  # "grouped" | "loop" (reference)

    def forward(self, x: torch.Tensor, r: RouterOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, d) -> (out (T, d), tokens per expert (E,) int64)."""
        fn = experts_grouped if self.impl == "grouped" and _grouped_mm is not None else experts_loop
        w13, w2 = self.gate_up_proj, self.down_proj
        if torch.is_autocast_enabled(x.device.type):
            # autocast does not cover grouped_mm: cast like it casts F.linear, else the expert GEMMs
            # run in fp32 (on CUDA a slow non-grouped fallback)
            dt = torch.get_autocast_dtype(x.device.type)
            x, w13, w2 = x.to(dt), w13.to(dt), w2.to(dt)
        return fn(x, r.indices, r.weights, w13, w2)


def expert_counts(flat: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Tokens per expert (E,) int64. Unlike bincount, the output shape never depends on the data,
    so no device->host sync and the step stays CUDA-graph capturable."""
    return torch.zeros(n_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))


def _swiglu(h: torch.Tensor) -> torch.Tensor:
    """h (N, 2I) = [gate | up] -> silu(gate) * up (N, I); fused Triton kernel on CUDA."""
    return swiglu_cat(h)


def experts_grouped(x, idx, w, w13, w2):
    """Sort (token, expert) pairs by expert, then two grouped GEMMs over the contiguous slices.

    Permute (x[order // K]) and unpermute (weighted sum of each token's K rows in fp32, no
    atomics) are `kernels.permute`: one fused Triton pass each way on CUDA."""
    T, K = idx.shape
    flat = idx.reshape(-1)  # (T*K,)
    order = flat.argsort(stable=True)
    counts = expert_counts(flat, w13.shape[0])
    offs = counts.cumsum(0).to(torch.int32)  # group end offsets
    inv = inverse_permutation(order).view(T, K)  # inv[t, k] = row of pair (t, k) in expert order
    xs = moe_permute(x, order, inv)  # (T*K, d) rows grouped by expert
    h = _grouped_mm(xs, w13.transpose(1, 2), offs=offs)  # (T*K, 2I)
    ys = _grouped_mm(_swiglu(h), w2.transpose(1, 2), offs=offs)  # (T*K, d)
    return moe_unpermute(ys, w, inv, x.dtype), counts


def experts_loop(x, idx, w, w13, w2):
    """Reference: one dense SwiGLU per expert over the tokens routed to it."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    counts = expert_counts(idx.reshape(-1), w13.shape[0])
    for e in range(w13.shape[0]):
        tok, slot = torch.where(idx == e)
        if tok.numel() == 0:
            continue
        y = F.linear(_swiglu(F.linear(x[tok], w13[e])), w2[e])
        out.index_add_(0, tok, y.float() * w[tok, slot, None])
    return out.to(x.dtype), counts


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = Gate(cfg)
        self.experts = GroupedExperts(cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size)
        self.shared_experts = MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts) if cfg.n_shared_experts else None
        self.last_counts: torch.Tensor | None = None  # (E,) tokens routed to each expert, last forward
        self.last_balance: torch.Tensor | None = None  # scalar sequence-wise balance loss (unweighted)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, S, d) normed hidden -> (B, S, d); records expert loads and the balance loss."""
        B, S, d = x.shape
        u = x.reshape(-1, d)
        r = self.gate(u)
        y, counts = self.experts(u, r)
        self.last_counts = counts.detach()
        self.last_balance = sequence_balance_loss(r, B, self.cfg) if self.training else None
        if self.shared_experts is not None:
            y = y + self.shared_experts(u)
        return y.view(B, S, d)


def sequence_balance_loss(r: RouterOutput, batch: int, cfg: ModelConfig) -> torch.Tensor:
    """V3 report eq. 17-20, per sequence then averaged: Σ_i f_i P_i (multiply by α outside).

    f_i = N_r/(K_r T) Σ_t 1[i ∈ TopK_t] (no gradient); P_i = mean_t s'_{i,t}, s' = s / Σ_j s_j.
    """
    E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
    s = r.scores.view(batch, -1, E)  # (B, T, E)
    T = s.shape[1]
    hits = torch.zeros_like(s).scatter_(2, r.indices.view(batch, T, K), 1.0)
    f = hits.sum(1) * (E / (K * T))  # (B, E)
    p = (s / s.sum(-1, keepdim=True)).mean(1)  # (B, E)
    return (f.detach() * p).sum(-1).mean()

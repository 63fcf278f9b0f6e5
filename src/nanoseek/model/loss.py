"""Training objectives the trainer calls (V3 report §2.1.2, §2.2, §4.2).

- next-token cross-entropy + λ/D Σ_k MTP cross-entropy (labels -100 are ignored);
- the sequence-wise balance loss α Σ f_i P_i (computed by each MoE layer, summed here);
- the auxiliary-loss-free router-bias update b_i += γ · sign(mean_load − load_i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .transformer import DeepSeekV3, ModelOutput

IGNORE = -100


def cross_entropy(model: DeepSeekV3, hidden: torch.Tensor, labels: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Mean CE of lm_head(hidden) (N.., d) against labels (N..), fp32 logits.

    chunk > 0 computes the logits `chunk` tokens at a time under activation checkpointing, so the
    full (tokens × vocab) logits never exist at once, forward or backward.
    """
    h, y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    n = (y != IGNORE).sum().clamp(min=1)
    if chunk <= 0 or h.shape[0] <= chunk:
        return F.cross_entropy(model.lm_head(h).float(), y, ignore_index=IGNORE, reduction="sum") / n
    from torch.utils.checkpoint import checkpoint

    def part(hc, yc):
        return F.cross_entropy(model.lm_head(hc).float(), yc, ignore_index=IGNORE, reduction="sum")

    total = sum(checkpoint(part, h[i: i + chunk], y[i: i + chunk], use_reentrant=False) for i in range(0, h.shape[0], chunk))
    return total / n


def mtp_labels(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Labels for MTP depth k: position i predicts token i+k+1 = labels[i+k], which must not cross a
    document boundary. labels (B,S) already hold -100 at each document's last position, so any
    -100 among labels[i..i+k] means the target lies in another document (or past the end)."""
    S = labels.shape[1]
    out = labels[:, k:].clone()  # (B, S-k)
    for j in range(k):
        out[labels[:, j: j + S - k] == IGNORE] = IGNORE
    return out


@dataclass
class LossParts:
    total: torch.Tensor
    lm: torch.Tensor
    mtp: torch.Tensor | None
    balance: torch.Tensor | None


def model_loss(model: DeepSeekV3, out: ModelOutput, labels: torch.Tensor, mtp_weight: float = 0.3,
               balance_alpha: float = 0.0, chunk: int = 0, scale: torch.Tensor | None = None) -> LossParts:
    """L = L_main + λ/D Σ_k L_MTP^k + α L_Bal. `out` must come from forward(compute_logits=False, mtp=True).

    scale (1 + D,): multiplies the main and each MTP cross-entropy (token means of this batch). Data
    parallelism passes local_tokens × dp / global_tokens, so that the average over ranks is the token
    mean of the global batch, as one process computes it (dist.run.token_scale)."""
    sc = (lambda i: scale[i]) if scale is not None else (lambda i: 1.0)
    lm = cross_entropy(model, out.hidden, labels, chunk) if out.logits is None else \
        F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
    lm = lm * sc(0)
    total, mtp = lm, None
    if out.mtp_hidden:
        mtp = sum(cross_entropy(model, h, mtp_labels(labels, k), chunk) * sc(k)
                  for k, h in enumerate(out.mtp_hidden, 1)) / len(out.mtp_hidden)
        total = total + mtp_weight * mtp
    bal = out.balance_loss
    if bal is not None and balance_alpha > 0:
        total = total + balance_alpha * bal
    return LossParts(total, lm.detach(), None if mtp is None else mtp.detach(), None if bal is None else bal.detach())


@torch.no_grad()
def update_router_bias(model: DeepSeekV3, counts: torch.Tensor, gamma: float) -> None:
    """Aux-loss-free balancing: b_i += γ·sign(mean − c_i) per MoE layer (paper form, not centred).

    counts (n_moe_layers, E): tokens routed to each expert over the whole (global) step, in
    `model.moe_layers()` order (sum router_counts over micro-batches; all-reduce under DP).
    """
    for m, c in zip(model.moe_layers(), counts.float()):
        b = m.gate.e_score_correction_bias
        b += gamma * torch.sign(c.mean() - c).to(b.device, b.dtype)


def load_imbalance(counts: torch.Tensor) -> torch.Tensor:
    """(n_layers, E) -> max/mean load per layer (1.0 = perfectly balanced)."""
    c = counts.float()
    return c.max(-1).values / c.mean(-1).clamp(min=1e-9)

"""GRPO / PPO loss math as pure tensor functions (no model): R1.md §1.1 and §2.

Shapes: N sequences (= B prompts x G samples, grouped contiguously: rows g*G..g*G+G-1 share a
prompt), T completion positions (right-padded), `mask` (N, T) is 1 on real completion tokens.
Per token (R1.md §2):

    l_{i,t} = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) + beta * k3,
    rho = exp(logp - old_logp),  k3 = exp(ref - logp) - (ref - logp) - 1  (>= 0, unbiased).

Variants differ only in how l is aggregated (`agg`) and how A is scaled (`group_advantages`).
Metrics are detached 0-dim tensors (no host sync here; call `.item()` when logging).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Scale = Literal["group", "batch", "none"]
Agg = Literal["grpo", "dapo", "dr_grpo"]


# ----------------------------------------------------------------------------- advantages


def group_advantages(rewards: Tensor, group_size: int, scale: Scale = "group",
                     eps: float = 1e-4) -> Tensor:
    """Outcome advantages (N,) from rewards (N,) = (B*G,), one per sequence (R1.md §1.1, §2).

    A = (r - group mean) / (std + eps), std being the unbiased std of the group (`"group"`, TRL
    default, the paper), of the whole batch (`"batch"`, Lite PPO), or 1 (`"none"`, Dr. GRPO:
    std scaling over-weights too-easy and too-hard prompts). A group of one has no baseline and
    gets advantage 0 (verl would give it A = r, silently: R1.md §7 "Group identity").
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards {tuple(rewards.shape)} is not (B*G,) with G={group_size}")
    r = rewards.float().view(-1, group_size)  # (B, G)
    if group_size == 1:
        return torch.zeros_like(rewards, dtype=torch.float32)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.float().std() + eps)
    elif scale != "none":
        raise ValueError(f"scale must be group|batch|none, got {scale!r}")
    return centred.reshape(-1)


def filter_zero_std_groups(rewards: Tensor, group_size: int,
                           tol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """DAPO dynamic sampling: keep mask (N,) bool of samples whose group has reward spread, and
    the fraction of groups with none (`frac_reward_zero_std`, a 0-dim tensor).

    Zero-spread groups carry zero advantage, so no gradient; when their fraction nears 1 the
    run has collapsed (R1.md §5 [measured], §7). Resample or drop them.
    """
    r = rewards.float().view(-1, group_size)  # (B, G)
    zero = (r.max(dim=1).values - r.min(dim=1).values) <= tol  # (B,)
    return (~zero).repeat_interleave(group_size), zero.float().mean()


# ----------------------------------------------------------------------------- GRPO loss


def mask_truncated(mask: Tensor, truncated: Tensor) -> Tensor:
    """Zero the mask (N, T) of sequences flagged truncated (N,): a cut-off answer then teaches
    nothing, instead of being scored as plainly wrong (R1.md §6.2, TRL
    `mask_truncated_completions`)."""
    return mask * (~truncated.bool()).unsqueeze(1).to(mask.dtype)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(d) - d - 1 with d = ref - logp; >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def aggregate(per_token: Tensor, mask: Tensor, agg: Agg = "grpo", max_len: int | None = None,
              num_tokens: float | Tensor | None = None) -> Tensor:
    """Reduce a per-token loss (N, T) to a scalar (R1.md §2 table).

    grpo:    mean_i( sum_t l / |o_i| ) over all N rows (TRL: fully-masked rows count as 0);
             sample-level, biased toward short right and long wrong answers.
    dapo:    sum l / active tokens; `num_tokens` overrides the denominator with the global
             count over gradient-accumulation micro-batches (TRL's "dapo" vs "bnpo").
    dr_grpo: sum l / (N * max_len), a constant (defaults to T), so length carries no bias.
    """
    mask = mask.to(per_token.dtype)
    total = per_token * mask
    if agg == "grpo":
        return (total.sum(1) / mask.sum(1).clamp(min=1)).mean()
    if agg == "dapo":
        denom = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
        return total.sum() / denom
    if agg == "dr_grpo":
        return total.sum() / (per_token.shape[0] * (max_len or per_token.shape[1]))
    raise ValueError(f"agg must be grpo|dapo|dr_grpo, got {agg!r}")


def grpo_loss(logp: Tensor, old_logp: Tensor | None, ref_logp: Tensor | None,
              advantages: Tensor, mask: Tensor, eps_low: float = 0.2,
              eps_high: float | None = None, beta: float = 0.0, agg: Agg = "grpo",
              max_len: int | None = None, truncated: Tensor | None = None,
              num_tokens: float | Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped-surrogate GRPO loss (to minimise) and metrics.

    logp, old_logp, ref_logp: (N, T) log-probs of the sampled tokens under pi_theta (with grad),
    pi_old and pi_ref. `old_logp=None` means on-policy (mu=1): rho == 1 and clipping is a no-op
    (R1.md §7), the value is ~0 but the gradient is the policy gradient (R1.md §6.3).
    `ref_logp=None` or beta=0 drops the KL term (TRL default; R1 used 0.001).
    advantages: (N,) outcome advantages, or (N, T) per-token ones (PPO/GAE reuses this loss).
    eps_high: DAPO clip-higher (0.28); None = eps_low. `truncated` (N,) bool: if given, those
    rows are masked out (pass None to keep them). `agg`, `max_len`, `num_tokens`: `aggregate`.

    Metrics: clip_ratio/low_mean (rho < 1-eps_low with A<0), clip_ratio/high_mean (rho >
    1+eps_high with A>0), clip_ratio/region_mean (either), kl (k3 mean), ratio/mean|min|max,
    completions/truncated_frac; all over active tokens.
    """
    eps_high = eps_low if eps_high is None else eps_high
    if truncated is not None:
        mask = mask_truncated(mask, truncated)
    mask = mask.to(logp.dtype)
    old_logp = logp.detach() if old_logp is None else old_logp
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (N, 1) or (N, T)
    ratio = torch.exp(logp - old_logp)  # (N, T)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else None
    if kl is not None and beta != 0.0:
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, agg, max_len, num_tokens)

    with torch.no_grad():
        low = ((ratio < 1 - eps_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype)
        active = mask.bool()
        r_act = ratio[active] if active.any() else ratio.new_ones(1)
        metrics = {
            "clip_ratio/low_mean": _masked_mean(low, mask),
            "clip_ratio/high_mean": _masked_mean(high, mask),
            "clip_ratio/region_mean": _masked_mean(low + high, mask),
            "kl": _masked_mean(kl, mask) if kl is not None else ratio.new_zeros(()),
            "ratio/mean": r_act.mean(), "ratio/min": r_act.min(), "ratio/max": r_act.max(),
            "completions/truncated_frac": (truncated.float().mean() if truncated is not None
                                           else ratio.new_zeros(())),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


# ----------------------------------------------------------------------------- logits helpers


def _rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def _entropy_chunk(logits: Tensor) -> Tensor:
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Entropy (...,) of softmax(logits (..., V)), `chunk_size` rows at a time, in fp32.

    Only one chunk's (chunk, V) softmax exists at once (R1.md §6.8: full-vocab OOM on long
    rollouts). With grad, each chunk is recomputed in backward (checkpoint) for the same reason.
    """
    flat = _rows(logits)
    fn = _entropy_chunk
    outs = [checkpoint(fn, c, use_reentrant=False) if c.requires_grad else fn(c)
            for c in flat.split(chunk_size)]
    return torch.cat(outs).view(logits.shape[:-1])


def token_logprobs(logits: Tensor, ids: Tensor, chunk_size: int = 1024) -> Tensor:
    """log softmax(logits)[ids]: (..., V), (...) -> (...), chunked like `entropy_from_logits`
    (logit of the token minus logsumexp, so no (rows, V) log-softmax is materialised)."""
    flat, idx = _rows(logits), ids.reshape(-1, 1)
    outs = [c.float().gather(-1, i).squeeze(-1) - torch.logsumexp(c.float(), dim=-1)
            for c, i in zip(flat.split(chunk_size), idx.split(chunk_size))]
    return torch.cat(outs).view(ids.shape)


# ----------------------------------------------------------------------------- PPO pieces


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation for the PPO-with-critic baseline (TinyZero, R1.md §2).

    rewards, values, mask: (N, T); the reward usually sits on the last active token. Masked
    (padding) positions are skipped: the value after the last active token is 0 (episode end).
    Returns (advantages, returns), both (N, T) and zero where mask is 0; returns = A + V.
    Whiten advantages with `masked_whiten` before the policy loss, as PPO does.
    """
    mask = mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])
    last_adv = torch.zeros_like(values[:, 0])
    advs = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * last_adv
        last_adv = m * adv_t + (1 - m) * last_adv  # padding: carry state through unchanged
        next_value = m * values[:, t] + (1 - m) * next_value
        advs[:, t] = m * adv_t
    return advs, (advs + values) * mask


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over active positions (biased std), zero elsewhere."""
    mask = mask.to(x.dtype)
    mean = _masked_mean(x, mask)
    var = _masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                   clip: float | None = 0.2) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clip - R)^2), token-mean over mask (N, T).

    V_clip = old + clamp(V - old, -clip, clip) keeps the critic near the values that made the
    advantages (PPO2 / verl); clip=None is plain MSE. Metric vf_clipfrac: share of tokens where
    the clipped term is the larger one.
    """
    mask = mask.to(values.dtype)
    err = (values - returns) ** 2
    if clip is None:
        return 0.5 * _masked_mean(err, mask), {"vf_clipfrac": values.new_zeros(())}
    v_clip = old_values + torch.clamp(values - old_values, -clip, clip)
    err_clip = (v_clip - returns) ** 2
    loss = 0.5 * _masked_mean(torch.max(err, err_clip), mask)
    frac = _masked_mean((err_clip > err).to(mask.dtype), mask).detach()
    return loss, {"vf_clipfrac": frac}

"""PPO with a learned critic: the baseline GRPO replaces (R1.md §1.1 "the group baseline replaces
the critic"; TinyZero's recipe, §2/§4), for claim C3 of CLAIMS.md (GRPO needs ~1/3 of PPO's memory).

Same policy, rollouts, rewards, clipping, KL and update loop as `grpo.py`; only the advantage
differs. The outcome reward sits on each completion's last token, a critic (a copy of the policy
trunk with a scalar head instead of lm_head, as in PPO-for-LLMs) gives V(s_t), GAE turns both into
per-token advantages (whitened), and the critic is trained with the clipped value loss on its own
AdamW. The KL stays in the loss (as in GRPO) so the two differ only by the critic.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..model.generate import release_decode_graph
from ..train.optim import build_optimizer
from .grpo import (GRPOConfig, GRPOTrainer, LossConfig, RLTrainConfig, RolloutConfig, pick_device, rl_cli,
                   run_rl)
from .objective import gae, masked_whiten, ppo_value_loss
from .rollout import Batch, Samples, precision_ctx


@dataclass
class PPOSection:
    critic_lr: float = 1e-4
    gamma: float = 1.0
    lam: float = 1.0  # TinyZero / verl defaults for outcome rewards
    vf_clip: float | None = 0.2
    whiten: bool = True  # normalise advantages over the batch's active tokens


@dataclass
class PPOConfig(GRPOConfig):
    name: str = "ppo"
    out_dir: str = "runs/ppo"
    ppo: PPOSection = field(default_factory=PPOSection)

    SECTIONS = {**GRPOConfig.SECTIONS, "ppo": PPOSection}


class Critic(nn.Module):
    """V(s_t) for every completion position: the policy trunk (copied) + a zero-init scalar head."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        body = copy.deepcopy(policy)
        body.lm_head, body.mtp = nn.Identity(), nn.ModuleList()  # no vocab head, no MTP
        body.__dict__.pop("_moes", None)
        self.body = body
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, b: Batch) -> torch.Tensor:
        """-> (N, Tc) fp32 values at the positions whose logits predict completion token t."""
        with precision_ctx(b.input_ids.device):
            h = self.body(b.input_ids, attention_mask=b.attention_mask, compute_logits=False).hidden
            h = h.gather(1, b.gather_idx[..., None].expand(-1, -1, h.shape[-1]))
            return self.value_head(h).squeeze(-1).float()


class PPOTrainer(GRPOTrainer):
    algo = "ppo"

    def __init__(self, cfg: PPOConfig, model=None, tok=None) -> None:
        super().__init__(cfg, model, tok)
        self.critic = Critic(self.model).to(self.device).train()
        self.critic_opt = build_optimizer(self.critic, dataclasses.replace(cfg.optim, lr=cfg.ppo.critic_lr),
                                          self.device)

    def held_models(self):
        return super().held_models() + [(self.critic, self.critic_opt)]

    @torch.no_grad()
    def compute_advantages(self, s: Samples, b: Batch) -> torch.Tensor:
        """(N, Tc) GAE advantages; caches old values and returns for the value loss."""
        p = self.cfg.ppo
        micro = self.cfg.grpo.micro_batch_size or b.n
        values = torch.cat([self.critic(b[i:i + micro]) for i in range(0, b.n, micro)])  # (N, Tc)
        last = (b.mask.sum(1).long() - 1).clamp(min=0)  # outcome reward on the last real token
        rewards = torch.zeros_like(values)
        rewards[torch.arange(b.n, device=values.device), last] = s.rewards.to(values.device)
        adv, self._returns = gae(rewards, values, b.mask, p.gamma, p.lam)
        self._old_values = values
        return masked_whiten(adv, b.mask) if p.whiten else adv

    def _micro_extra(self, idx: torch.Tensor, sub: Batch, weight: float) -> dict:
        v = self.critic(sub)
        vl, met = ppo_value_loss(v, self._old_values[idx], self._returns[idx], self.cur_mask[idx],
                                 self.cfg.ppo.vf_clip)
        (vl * weight).backward()
        return {"value_loss": vl.detach() * weight, "vf_clipfrac": met["vf_clipfrac"]}

    def _after_opt_step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.cfg.optim.grad_clip)
        self.critic_opt.step()
        self.critic_opt.zero_grad(set_to_none=True)

    def save(self, run_dir: Path) -> Path:
        ck = super().save(run_dir)
        torch.save({"critic": self.critic.state_dict(), "opt": self.critic_opt.state_dict()}, ck / "critic.pt")
        return ck

    def resume(self, run_dir: Path) -> bool:
        from ..train.checkpoint import list_checkpoints

        ok = super().resume(run_dir)
        if ok and (list_checkpoints(run_dir)[-1] / "critic.pt").exists():
            sd = torch.load(list_checkpoints(run_dir)[-1] / "critic.pt", map_location=self.device, weights_only=False)
            self.critic.load_state_dict(sd["critic"])
            self.critic_opt.load_state_dict(sd["opt"])
        return ok


def run_ppo(cfg: PPOConfig, resume: bool = False) -> Path:
    return run_rl(cfg, PPOTrainer, resume)


def main_ppo(argv: list[str]) -> int:
    return rl_cli(argv, "ppo", PPOConfig, run_ppo)


# ----------------------------------------------------------------------------- claim C3


def _measure(trainer_cls, cfg: GRPOConfig, steps: int) -> dict:
    """One warm-up step (allocates optimizer state, warms kernels), then `steps` measured ones."""
    cuda = pick_device(cfg.train.device).type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
    tr = trainer_cls(cfg)
    tr.train_step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    recs = []
    for _ in range(steps):
        recs.append(tr.train_step()[0])
        tr.step += 1
    mean = lambda k: sum(r[k] for r in recs) / len(recs)  # noqa: E731
    out = {"step_s": mean("time/step"), "generate_s": mean("time/generate"), "score_s": mean("time/score"),
           "update_s": mean("time/update"), "state_bytes": tr.state_bytes(), "models_held": len(tr.held_models()),
           "peak_bytes": (torch.cuda.max_memory_allocated() - base) if cuda else None,
           "tokens_generated": mean("tokens/generated")}
    release_decode_graph(tr.model)  # the cached decode graph + cache would count against the next run
    del tr
    gc.collect()
    return out


def compare_grpo_ppo_memory(model_dir: str | Path, prompts: int = 4, group_size: int = 4,
                            max_new_tokens: int = 32, beta: float = 0.04, steps: int = 1,
                            micro_batch_size: int = 16, device: str = "auto", task: str = "arithmetic",
                            level=1, seed: int = 0) -> dict:
    """Peak memory and step time of GRPO vs PPO on the same policy, samples and settings.

    state_bytes: parameters + grads + AdamW moments (+ buffers) of every model the algorithm holds
    (policy, reference when beta > 0, critic): exact on any device. peak_bytes: CUDA
    max_memory_allocated over the measured step(s) (None on CPU, where torch keeps no such counter).
    """
    out_dir = tempfile.mkdtemp(prefix="nanoseek-c3-")
    common = dict(init=str(model_dir), out_dir=out_dir, task={"name": task, "level": level, "seed": seed},
                  rollout=RolloutConfig(prompts_per_step=prompts, group_size=group_size,
                                        max_new_tokens=max_new_tokens),
                  grpo=LossConfig(beta=beta, micro_batch_size=micro_batch_size),
                  train=RLTrainConfig(steps=steps + 1, device=device, seed=seed))
    res = {"grpo": _measure(GRPOTrainer, GRPOConfig(**common), steps),
           "ppo": _measure(PPOTrainer, PPOConfig(**common), steps)}
    g, p = res["grpo"], res["ppo"]
    res["state_ratio_grpo_over_ppo"] = g["state_bytes"] / p["state_bytes"]
    if g["peak_bytes"] and p["peak_bytes"]:
        res["peak_ratio_grpo_over_ppo"] = g["peak_bytes"] / p["peak_bytes"]
    res["step_ratio_grpo_over_ppo"] = g["step_s"] / p["step_s"]
    res["settings"] = {"prompts": prompts, "group_size": group_size, "max_new_tokens": max_new_tokens,
                       "beta": beta, "steps": steps, "micro_batch_size": micro_batch_size, "device": device,
                       "time": time.strftime("%Y-%m-%d %H:%M")}
    return res

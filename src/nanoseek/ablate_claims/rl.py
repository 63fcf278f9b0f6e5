"""R1 claims: C3 (GRPO vs PPO memory), C10 (multi-stage pipeline efficiency)."""

from __future__ import annotations

import torch

from ..ablate import NOT_RUN, Ctx, Record, claim, judge
from .common import build, tiny_config, tokenizer


@claim("C3")
def c3_grpo_memory(ctx: Ctx) -> Record:
    """GRPO vs PPO-with-critic on the same tiny policy and samples: training-state bytes and step time."""
    r = Record("C3", "GRPO memory vs PPO", "GRPO needs about 1/3 of PPO's memory (no critic)")
    try:
        from ..model.hf import save_pretrained
        from ..r1.ppo import compare_grpo_ppo_memory
    except ImportError as e:
        r.verdict, r.why = NOT_RUN, f"not run: needs the R1 pipeline ({e})"
        return r
    d = ctx.out / "c3_policy"
    save_pretrained(build(tiny_config(hidden_size=64, num_nextn_predict_layers=0), ctx.seed), d)
    tokenizer().save(d)
    res = compare_grpo_ppo_memory(d, prompts=2, group_size=ctx.pick(2, 4), max_new_tokens=ctx.pick(6, 24), beta=0.04,
                                  device="cuda" if torch.cuda.is_available() else "cpu", seed=ctx.seed)
    ratio = r.add("state_bytes_grpo_over_ppo", res["state_ratio_grpo_over_ppo"], "ratio")
    r.add("step_time_grpo_over_ppo", res["step_ratio_grpo_over_ppo"], "ratio")
    r.add("peak_bytes_grpo_over_ppo", res.get("peak_ratio_grpo_over_ppo"), "ratio (CUDA only)")
    r.verdict = judge(ratio, 1 / 3, "lower", noise=0.05)
    r.headline = f"GRPO holds {ratio:.0%} of PPO's training state; step {res['step_ratio_grpo_over_ppo']:.2f}x"
    r.why = (f"Same tiny policy, prompts and settings (KL β=0.04, so both hold a frozen reference). Parameters + grads + "
             f"AdamW moments of every model held: GRPO/PPO = {ratio:.2f}. PPO's critic is a policy-sized model with its "
             f"own optimizer, so GRPO saves {1 - ratio:.0%} of the held state, not two thirds; '1/3' would need PPO to also "
             f"hold a learned reward model (rewards here are rule-based). Peak activation memory is CUDA-only.")
    r.details = res
    return r


@claim("C10")
def c10_multistage(ctx: Ctx) -> Record:
    """Not run: comparing accuracy per GPU-hour needs models that can solve the task at all."""
    return Record("C10", "SFT->RL->SFT->RL efficiency", "~40% more efficient than single-stage", verdict=NOT_RUN,
                  headline="not run",
                  why="not run: the R1 pipeline exists (`nanoseek r1`), but accuracy per GPU-hour of the 4-stage pipeline vs "
                      "RL-only vs SFT-only is only meaningful for a model with non-zero task accuracy, i.e. hours of GPU "
                      "training, not a CPU minute. Compare `nanoseek r1` reports of the three variants on a GPU.")

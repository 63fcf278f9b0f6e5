"""R1-style reasoning RL: rule rewards, verifiable tasks and the GRPO/PPO loss math.

`rewards` and `tasks` are plain Python (no torch); `objective` is pure tensor functions.
The design note is docs/grpo.md.
"""

from .rewards import (REWARDS, RewardSet, answers_match, combine_rewards, extract_answer,
                      get_reward, register_reward, reward_metrics)
from .tasks import eval_set, load_jsonl, make_prompt, train_set, train_stream

__all__ = [
    "REWARDS", "RewardSet", "answers_match", "combine_rewards", "extract_answer", "get_reward",
    "register_reward", "reward_metrics", "eval_set", "load_jsonl", "make_prompt", "train_set",
    "train_stream",
]

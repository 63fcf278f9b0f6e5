"""EPLB-style expert placement (V3 §3.4 "redundant experts"; deepseek-ai/EPLB).

From recorded per-expert loads (the trainer's `router_counts`), duplicate the hottest experts into
`n_redundant` extra slots, then pack all copies onto the EP ranks so each rank's expected load
evens out (greedy longest-processing-time packing with equal slot counts per rank). A token of an
expert with c copies goes to one of them, so each copy is assumed to get load/c.
This is the planner only: applying a plan (moving expert weights, routing to copies) is not done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EPLBPlan:
    placement: list[list[int]]  # rank -> the logical experts in its slots (copies included)
    replicas: list[int]  # (E,) copies of each expert (1 = not duplicated)
    rank_load: list[float]  # expected tokens per rank under the plan
    before: float  # max/mean rank load with the default contiguous placement, no copies
    after: float  # max/mean rank load under the plan

    def summary(self) -> str:
        dup = [e for e, c in enumerate(self.replicas) if c > 1]
        return (f"{len(self.placement)} ranks × {len(self.placement[0])} slots; duplicated experts {dup}; "
                f"max/mean rank load {self.before:.3f} -> {self.after:.3f}")


def _imbalance(rank_load: torch.Tensor) -> float:
    return float(rank_load.max() / rank_load.mean().clamp(min=1e-12))


def replicate(load: torch.Tensor, n_redundant: int) -> torch.Tensor:
    """Give each extra slot to the expert with the highest load per copy. load (E,) -> copies (E,)."""
    copies = torch.ones_like(load, dtype=torch.long)
    for _ in range(n_redundant):
        copies[torch.argmax(load / copies)] += 1
    return copies


def plan(load: torch.Tensor, n_ranks: int, n_redundant: int = 0) -> EPLBPlan:
    """load (E,) tokens per expert -> a placement over n_ranks with E + n_redundant slots."""
    load = load.double().flatten()
    E = load.numel()
    if E % n_ranks or (E + n_redundant) % n_ranks:
        raise ValueError(f"experts ({E}) and experts + redundant ({E + n_redundant}) must both divide over {n_ranks} ranks")
    slots = (E + n_redundant) // n_ranks
    before = load.view(n_ranks, -1).sum(1)  # contiguous: rank r holds experts [r·E/n, (r+1)·E/n)
    copies = replicate(load, n_redundant)
    items = sorted(((float(load[e] / copies[e]), e) for e in range(E) for _ in range(int(copies[e]))), reverse=True)
    placement: list[list[int]] = [[] for _ in range(n_ranks)]
    rank_load = torch.zeros(n_ranks, dtype=torch.float64)
    for w, e in items:  # heaviest copy first, onto the least-loaded rank with a free slot (not already holding e)
        free = [r for r in range(n_ranks) if len(placement[r]) < slots]
        pick = [r for r in free if e not in placement[r]] or free
        r = min(pick, key=lambda r: (float(rank_load[r]), r))
        placement[r].append(e)
        rank_load[r] += w
    return EPLBPlan(placement, copies.tolist(), rank_load.tolist(), _imbalance(before), _imbalance(rank_load))


def plan_layers(counts: torch.Tensor, n_ranks: int, n_redundant: int = 0) -> list[EPLBPlan]:
    """counts (n_moe_layers, E), e.g. summed router_counts: one plan per MoE layer."""
    return [plan(c, n_ranks, n_redundant) for c in counts]

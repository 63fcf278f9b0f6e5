"""Expert parallelism: routed experts sharded over the EP group, dropless all-to-all dispatch/combine.

Each of the `ep` ranks holds experts [r·E/ep, (r+1)·E/ep) as a DTensor Shard(0) of the full
(E, 2I, d) / (E, d, I) stacks, so checkpoints see the global tensors and reshard freely.
Per MoE layer and micro-batch (V3 §3.2.2; torchtitan's AllToAll dispatcher):
  1. route locally (the gate is replicated); sort the T·K (token, expert) pairs by expert, which
     also groups them by destination rank since each rank owns a contiguous expert range;
  2. exchange per-expert counts (one small all-to-all) -> receive sizes, no padding, no drops;
  3. all-to-all the token rows; run the local experts with one grouped GEMM; all-to-all back;
  4. weight and sum the K outputs of each token on its home rank.
Node-limited routing needs no code here: with n_group = number of EP nodes and experts laid out
contiguously, the gate's group limit (topk_group = M) already sends each token to <= M nodes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from ..kernels.permute import inverse_permutation, moe_permute, moe_unpermute
from ..model.moe import GroupedExperts, RouterOutput, _grouped_mm, expert_counts, experts_grouped, experts_loop


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with variable splits; its gradient is the reverse all-to-all."""

    @staticmethod
    def forward(ctx, x, out_splits: list[int], in_splits: list[int], group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, g):
        out_splits, in_splits = ctx.splits
        return _AllToAll.apply(g, in_splits, out_splits, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    """Autograd-aware variable-size all-to-all over dim 0 (x rows go to ranks by in_splits)."""
    return _AllToAll.apply(x, out_splits, in_splits, group)


class EPExperts(GroupedExperts):
    """Drop-in for GroupedExperts under EP: same parameter names, global shapes, local compute."""

    def __init__(self, experts: GroupedExperts, ep_mesh) -> None:
        nn.Module.__init__(self)
        self.n_experts, self.hidden, self.impl = experts.n_experts, experts.hidden, experts.impl
        self.mesh, self.ep = ep_mesh, ep_mesh.size()
        self.group = ep_mesh.get_group()
        # Every rank built the same full model (same seed): keep only the local chunk, no communication.
        shard = lambda p: nn.Parameter(distribute_tensor(p.detach(), ep_mesh, [Shard(0)], src_data_rank=None))
        self.gate_up_proj, self.down_proj = shard(experts.gate_up_proj), shard(experts.down_proj)

    def forward(self, x: torch.Tensor, r: RouterOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, d) -> (out (T, d), tokens this rank routed to each expert (E,) int64)."""
        T, K = r.indices.shape
        E, ep = self.n_experts, self.ep
        El = E // ep
        flat = r.indices.reshape(-1)  # (T·K,)
        order = flat.argsort(stable=True)  # pairs sorted by expert = by destination rank
        counts = expert_counts(flat, E)  # (E,)
        # Counts first: recv[i, e] = rows rank i sends to my local expert e. (ep·El,) int64
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts, group=self.group)
        send_splits = counts.view(ep, El).sum(1).tolist()  # one host sync per layer (dropless sizes)
        recv_splits = recv.view(ep, El).sum(1).tolist()
        inv = inverse_permutation(order).view(T, K)  # row of pair (t, k) in `order`
        xs = all_to_all(moe_permute(x, order, inv), recv_splits, send_splits, self.group)  # (R, d), by source rank
        # Local expert id of each received row, then the model's own expert kernel (sorts by expert).
        eid = torch.arange(El, device=x.device).repeat(ep).repeat_interleave(recv)  # (R,)
        w13, w2 = _local(self.gate_up_proj), _local(self.down_proj)  # (El, 2I, d), (El, d, I)
        fn = experts_grouped if self.impl == "grouped" and _grouped_mm is not None else experts_loop
        if xs.shape[0]:
            ys, _ = fn(xs, eid[:, None], torch.ones(eid.shape[0], 1, device=x.device), w13, w2)  # (R, d)
        else:  # nothing routed here: keep xs and the weights in the graph so every rank runs the same
            ys = xs * 0 + (w13.sum() + w2.sum()) * 0  # backward collectives (all-to-all, FSDP reduce-scatter)
        yb = all_to_all(ys, send_splits, recv_splits, self.group)  # (T·K, d) in `order` order
        # back to (token, slot), weighted, summed over K in fp32 (fused on CUDA, no atomics)
        return moe_unpermute(yb, r.weights, inv, x.dtype), counts


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if isinstance(p, DTensor) else p


def apply_expert_parallel(model: nn.Module, ep_mesh) -> int:
    """Replace every MoE's experts (main layers and MTP) by EPExperts. Returns how many."""
    n = 0
    for m in model.modules():
        experts = getattr(m, "experts", None)
        if isinstance(experts, GroupedExperts) and not isinstance(experts, EPExperts):
            m.experts = EPExperts(experts, ep_mesh)
            n += 1
    return n


@torch.no_grad()
def global_counts(counts: torch.Tensor, group=None) -> torch.Tensor:
    """Sum per-rank expert loads (n_moe_layers, E) over `group` (default: world) for the bias update."""
    c = counts.clone()
    dist.all_reduce(c, group=group)
    return c

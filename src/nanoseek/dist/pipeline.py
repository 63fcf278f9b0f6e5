"""Pipeline parallelism with `torch.distributed.pipelining`: stages by layers, 1F1B or DualPipeV.

A stage is a slice of DeepSeekV3 keeping the original parameter names (`model.layers.7...`), so
optimizer param groups, DCP checkpoints and parity tests line up with the unsplit model.
  first stage: input_ids (B,S) -> embed_tokens -> its layers
  middle:      h (B,S,d) -> its layers
  last stage:  its layers -> norm -> lm_head (+ MTP modules) -> logits
Packed batches add meta = (position_ids, doc_ids) (B,2,S) to the first stage's input; every stage
passes it on, so attention stays inside each document on all stages, as in the unsplit model.
With MTP the embeddings e = Emb(input_ids) (B,S,d) travel along with h: MTP module k consumes
e[:, k:] on the last stage, and e's gradient flows back to the first stage's embedding through
the pipeline, so the embedding shared by the main model and MTP lives on one rank only.

Placement: 1F1B has one stage per rank. DualPipeV (V3 §3.2.1, in its "V" form; torch's
`ScheduleDualPipeV`) has two per rank in a V: rank r holds stages r and 2·pp-1-r, so the first and
last stages (embedding, head, MTP) share rank 0, as in the V3 report. torch's DualPipeV runs the
DualPipe order and the split input/weight backward, but does not overlap one micro-batch's
all-to-all with another's compute by itself (EFFICIENCY.md §6.8); that needs an OVERLAP_F_B callback.
`Interleaved1F1B` uses loop placement (rank r holds r and r+pp).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.attention import document_causal_mask
from ..model.flex import document_block_mask, flex_available
from ..model.loss import IGNORE, mtp_labels
from ..model.moe import MoE
from ..model.transformer import DeepSeekV3


class _AttachAux(torch.autograd.Function):
    """Identity on h whose backward also seeds d(aux)=1: adds a stage-local loss term (the
    sequence-wise balance loss) to the pipeline's objective without sending it to the last stage
    (Megatron's MoEAuxLossAutoScaler)."""

    @staticmethod
    def forward(ctx, h, aux):
        ctx.shape = aux.shape
        return h.clone()  # not a view: pipelining detaches stage outputs in place

    @staticmethod
    def backward(ctx, g):
        return g, torch.ones(ctx.shape, dtype=torch.float32, device=g.device)


class Stage(nn.Module):
    def __init__(self, full: DeepSeekV3, index: int, n_stages: int, layer_ids: list[int],
                 mtp: bool, balance_alpha: float) -> None:
        super().__init__()
        self.config, self.index = full.config, index
        self.first, self.last = index == 0, index == n_stages - 1
        self.use_mtp = mtp and len(full.mtp) > 0
        self.balance_alpha = balance_alpha
        self.use_flex = full.use_flex
        self.model = nn.Module()  # same attribute paths as DeepSeekV3 -> same parameter names
        if self.first:
            self.model.embed_tokens = full.model.embed_tokens
        self.model.layers = nn.ModuleDict({str(i): full.model.layers[i] for i in layer_ids})
        self.model.rotary = full.model.rotary  # buffers only
        if self.last:
            self.model.norm, self.lm_head = full.model.norm, full.lm_head
            self.mtp = full.mtp  # kept even when unused (λ = 0) so checkpoints hold every weight
        gidx = {id(m): i for i, m in enumerate(full.moe_layers())}
        self.moes = [(gidx[id(m)], m) for m in self.modules() if isinstance(m, MoE)]  # (global MoE index, module)
        self.reset_stats()

    def reset_stats(self) -> None:
        self.records: list[tuple[dict, torch.Tensor]] = []  # per forward: ({MoE index: loads (E,)}, α·balance)

    def step_stats(self, n_micro: int) -> tuple[dict, torch.Tensor]:
        """Loads and α·balance summed over this step's micro-batches. Only the last n_micro forwards
        count: on its first step torch's pipelining runs one extra forward on uninitialized tensors
        to infer the shapes sent between stages (torch 2.13 dynamic metadata inference)."""
        recs = self.records[-n_micro:]
        counts = {i: sum(r[0][i] for r in recs) for i, _ in self.moes if recs and i in recs[0][0]}
        return counts, sum((r[1] for r in recs), torch.zeros(()))

    def forward(self, x: torch.Tensor, *rest: torch.Tensor):
        """x: input_ids (B,S) on the first stage, else h (B,S,d). rest: the MTP embeddings e (B,S,d)
        when MTP is on (not on the first stage), then `meta` (B,2,S) long = (position_ids, doc_ids) for
        packed batches: it travels with h (no gradient) so every stage masks attention per document."""
        e = rest[0] if self.use_mtp and not self.first else None
        meta = rest[-1] if len(rest) > (1 if e is not None else 0) else None
        if self.first:
            e = x = self.model.embed_tokens(x)
        B, S = x.shape[:2]
        pos = meta[:, 0] if meta is not None else torch.arange(S, device=x.device).expand(B, S)
        doc = meta[:, 1] if meta is not None else None
        cos, sin = self.model.rotary(pos)
        h, mask = x, self._mask(doc)  # built once per forward, shared by this stage's layers
        for layer in self.model.layers.values():
            h = layer(h, cos, sin, mask)
        if not self.last:  # outputs leave as new tensors, never as this stage's own inputs (torch 2.11's V
            # schedules fail on an output that is an input leaf: "does not require grad")
            out = (h, e if self.first else e.clone()) if self.use_mtp else (h,)
            out = out + (meta.clone(),) if meta is not None else out
            return self._stats(out if len(out) > 1 else out[0])
        h = self.model.norm(h)
        outs = [self.lm_head(h)]  # (B,S,V)
        for k, module in enumerate(self.mtp if self.use_mtp else [], start=1):  # as DeepSeekV3.mtp_forward
            L = S - k
            c, s = self.model.rotary(pos[:, :L])
            h = module(h[:, :L], e[:, k: k + L], c, s, self._mask(doc[:, :L] if doc is not None else None))
            outs.append(self.lm_head(h))  # (B,S-k,V)
        return self._stats(tuple(outs) if len(outs) > 1 else outs[0])

    def _mask(self, doc: torch.Tensor | None):
        """Block-diagonal causal mask of a packed batch (as DeepSeekV3._mask); None = plain causal."""
        if doc is None:
            return None
        if self.use_flex and flex_available(doc.device):
            return document_block_mask(doc)
        return document_causal_mask(doc)

    def _stats(self, out):
        """Record loads; fold the α-weighted balance loss of this stage's MoE layers into the backward."""
        bal = [m.last_balance for _, m in self.moes if m.last_balance is not None]
        counts = {i: m.last_counts for i, m in self.moes if m.last_counts is not None}
        for _, m in self.moes:
            m.last_counts = m.last_balance = None
        aux = self.balance_alpha * sum(bal) if bal and self.balance_alpha > 0 else None
        self.records.append((counts, torch.zeros(()) if aux is None else aux.detach().float().cpu()))
        if aux is None:
            return out
        if isinstance(out, tuple):
            return (_AttachAux.apply(out[0], aux), *out[1:])
        return _AttachAux.apply(out, aux)


def split_layers(n_layers: int, n_stages: int) -> list[list[int]]:
    """Contiguous, as even as possible; the earlier stages take the remainder (the last has the head)."""
    sizes = [n_layers // n_stages + (i < n_layers % n_stages) for i in range(n_stages)]
    starts = [sum(sizes[:i]) for i in range(n_stages)]
    return [list(range(a, a + n)) for a, n in zip(starts, sizes)]


def stage_ids(pp_rank: int, pp: int, schedule: str) -> list[int]:
    """Stages this rank holds: 1F1B r; DualPipeV (V) r and 2pp-1-r; Interleaved1F1B (loop) r, r+pp."""
    if schedule == "1F1B":
        return [pp_rank]
    if schedule == "DualPipeV":
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank, pp_rank + pp]


def build_stages(full: DeepSeekV3, pp_rank: int, pp: int, schedule: str, mtp: bool, balance_alpha: float) -> list[Stage]:
    n = pp * (1 if schedule == "1F1B" else 2)
    layers = split_layers(full.config.num_hidden_layers, n)
    return [Stage(full, i, n, layers[i], mtp, balance_alpha) for i in stage_ids(pp_rank, pp, schedule)]


def _ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = labels.reshape(-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y, ignore_index=IGNORE, reduction="sum"), (y != IGNORE).sum().clamp(min=1)


def make_loss_fn(mtp_weight: float):
    """loss(last-stage output, labels (B,S)) = CE + λ·mean_k CE_k, matching model.loss.model_loss.
    `loss_fn.lm` collects the main CE of each micro-batch (for logging; the caller clears it).
    With `loss_fn.norm` set, each CE is a sum over the micro-batch divided by norm[k] = the step's
    global token count / (micro-batches × dp): after the schedule's 1/micro-batches and FSDP's 1/dp,
    the gradient is that of the token mean over the global batch, as in one process."""
    def loss_fn(out, labels):
        outs = out if isinstance(out, tuple) else (out,)
        norm = loss_fn.norm  # None: this micro-batch's token means; else (1+D,) tokens per unit of loss
        s, n = _ce_sum(outs[0], labels)
        loss = s / (n if norm is None else norm[0])
        loss_fn.lm.append(loss.detach())
        if len(outs) > 1:
            mtp = 0.0
            for k, lg in enumerate(outs[1:], 1):
                sk, nk = _ce_sum(lg, mtp_labels(labels, k))
                mtp = mtp + sk / (nk if norm is None else norm[k])
            loss = loss + mtp_weight * mtp / (len(outs) - 1)
        return loss
    loss_fn.lm = []
    loss_fn.norm = None  # DistRun sets global tokens / (micro-batches × dp) before each step
    return loss_fn


def build_schedule(stages: list, n_micro: int, loss_fn, schedule: str):
    """torch schedule over this rank's PipelineStage objects."""
    from torch.distributed import pipelining as P

    if schedule == "1F1B":
        return P.Schedule1F1B(stages[0], n_micro, loss_fn=loss_fn, scale_grads=True)
    if schedule == "DualPipeV":
        cls = getattr(P, "ScheduleDualPipeV", None) or P.ScheduleZBVZeroBubble  # both V-placed, 2 stages/rank
        return cls(stages, n_micro, loss_fn=loss_fn, scale_grads=True)
    return P.ScheduleInterleaved1F1B(stages, n_micro, loss_fn=loss_fn, scale_grads=True)


def pipeline_stages(modules: list[Stage], n_stages: int, device, group) -> list:
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage

    stages = [PipelineStage(m, m.index, n_stages, device, group=group) for m in modules]
    if dist.get_backend(group) == "gloo":
        # torch 2.11 opens NCCL communicators with a p2p to each neighbour stage; under V placement
        # one neighbour is on the same rank and gloo cannot send to itself ("Pair is not connected").
        # gloo needs no such warm-up.
        for s in stages:
            if hasattr(s, "_get_init_p2p_neighbors_ops"):
                s._get_init_p2p_neighbors_ops = list
    return stages

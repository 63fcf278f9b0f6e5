"""Distributed training step and the torchrun entry point.

    torchrun --nproc_per_node=4 -m nanoseek.dist.run --model tiny --ep 2 --steps 5
    torchrun --nproc_per_node=2 -m nanoseek.dist.run --pp 2 --schedule DualPipeV --steps 5

parallelize() follows torchtitan's order: pipeline split -> EP -> (activation checkpointing,
compile: not applied here) -> FSDP. `DistRun.train_step(local_batch)` is the trainer's step under
a layout: the same objective (`default_loss`: CE + λ·MTP + α·balance), clipping at the global
gradient norm, AdamW, and the aux-loss-free bias update from loads summed over all ranks.
Every rank builds the full model from the same seed before sharding it (fine up to a few billion
parameters; larger models need meta-device init + checkpoint load, not done here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from ..model import DeepSeekV3, ModelConfig, load_imbalance, update_router_bias
from ..model.loss import IGNORE, mtp_labels
from ..train.config import OptimConfig, TrainConfig
from ..train.optim import build_optimizer, lr_at, micro_batches_at
from ..train.trainer import default_loss
from .expert_parallel import apply_expert_parallel
from .fsdp import apply_fsdp
from .mesh import Meshes, ParallelConfig, build_meshes, init_distributed
from .pipeline import build_schedule, build_stages, make_loss_fn, pipeline_stages


@dataclass
class DistRun:
    meshes: Meshes
    parts: list[nn.Module]  # [model] without PP, else this rank's Stage modules
    view: nn.Module  # the parts under the original FQNs (optimizer, checkpoints, clipping)
    opt: torch.optim.Optimizer
    schedule: object | None
    model_cfg: ModelConfig
    train: TrainConfig
    optim: OptimConfig
    step: int = 0
    moes: list = field(default_factory=list)  # (global MoE index, MoE module) on this rank

    @property
    def cfg(self) -> ParallelConfig:
        return self.meshes.cfg

    def train_step(self, batch: dict) -> dict:
        """One optimizer step on this rank's share of the global batch: input_ids, labels (B_local, S)."""
        lr = lr_at(self.step, self.optim, self.train.steps)
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss, lm, counts = self.forward_backward(batch)
        gn = clip_grad_norm(list(self.view.parameters()), self.optim.grad_clip, self.meshes.pp_group if self.cfg.pp > 1 else None)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        out = {"loss": loss, "lm": lm, "lr": lr, "grad_norm": gn, "tokens": batch["input_ids"].numel() * self.cfg.dp}
        if counts is not None:
            if self.train.bias_gamma > 0:  # the same global loads on every rank -> biases stay identical
                update_router_bias(SimpleNamespace(moe_layers=lambda: [m for _, m in self.moes]),
                                   counts[[i for i, _ in self.moes]], self.train.bias_gamma)
            imb = load_imbalance(counts)
            out.update(imbalance_mean=float(imb.mean()), imbalance_max=float(imb.max()), router_counts=counts)
        self.step += 1
        return out

    def forward_backward(self, batch: dict) -> tuple[float, float, torch.Tensor | None]:
        """Accumulate this step's gradients. Returns (loss, lm loss) averaged over dp and the global loads."""
        for p in self.parts:
            p.train()
        return self._pipeline(batch) if self.schedule else self._local(batch)

    def _local(self, batch: dict):
        """No PP: k micro-batches (the trainer's grad accumulation), FSDP syncs grads on the last one."""
        model, k = self.parts[0], micro_batches_at(self.step, self.train)
        chunks = [dict(zip(batch, vs)) for vs in zip(*(v.chunk(k) for v in batch.values()))]
        loss = lm = 0.0
        counts = None
        for j, mb in enumerate(chunks):
            if hasattr(model, "set_requires_gradient_sync"):
                model.set_requires_gradient_sync(j == len(chunks) - 1)
            mb = {n: v.to(self.meshes.device) for n, v in mb.items()}
            l, stats = default_loss(model, mb, self.train, self._token_scale(mb["labels"]))
            (l / len(chunks)).backward()
            loss, lm = loss + l.detach() / len(chunks), lm + stats["lm"] / len(chunks)
            rc = stats.get("router_counts")
            counts = rc if counts is None else counts + rc
        stats = torch.stack([loss, lm]).float()
        dist.all_reduce(stats)  # mean over dp ranks (pp = 1: the world is the dp group)
        stats /= self.cfg.dp
        if counts is not None:
            dist.all_reduce(counts)
        return float(stats[0]), float(stats[1]), counts

    def _pipeline(self, batch: dict):
        """PP: one schedule step over cfg.n_micro micro-batches of the local batch."""
        dev, stages, n = self.meshes.device, self.parts, self.cfg.n_micro
        for s in stages:
            s.reset_stats()
        ids, labels = batch["input_ids"].to(dev), batch["labels"].to(dev)
        if ids.shape[0] % n:
            raise ValueError(f"the local batch ({ids.shape[0]} sequences per dp rank) must be a multiple of the "
                             f"pipeline micro-batches ({n}); change the batch size or parallel.microbatches")
        first, last = any(s.first for s in stages), any(s.last for s in stages)
        losses: list[torch.Tensor] = []
        self.schedule.nanoseek_loss.lm.clear()
        self.schedule.nanoseek_loss.norm = self._global_tokens(labels) / (n * self.cfg.dp)
        args: tuple = ()
        if first:  # packed batches: positions and document ids travel with the activations
            args = (ids,) if "doc_ids" not in batch else (ids, self._meta(batch, ids))
        self.schedule.step(*args, **(dict(target=labels, losses=losses) if last else {}))
        # [lm + λ·MTP, lm] from the last stage, α·balance from every stage: summed over pp, mean over dp.
        stats = torch.zeros(3)
        if last:
            stats[0], stats[1] = torch.stack(losses).detach().mean().cpu(), torch.stack(self.schedule.nanoseek_loss.lm[-n:]).mean().cpu()
        per_stage = [s.step_stats(n) for s in stages]
        stats[2] = sum(a for _, a in per_stage) / n
        stats = stats.to(dev)
        dist.all_reduce(stats)
        stats /= self.cfg.dp
        counts = None
        if self.model_cfg.is_moe:
            counts = torch.zeros(len(_all_moe_ids(self.model_cfg)), self.model_cfg.n_routed_experts, dtype=torch.long, device=dev)
            for c, _ in per_stage:
                for i, v in c.items():
                    counts[i] += v.to(dev)
            dist.all_reduce(counts)  # stages own disjoint layers: the sum over the world is the global load
        return float(stats[0] + stats[2]), float(stats[1]), counts


    def _global_tokens(self, labels: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
        """(1+D,) float: tokens with a target for the main and each MTP loss, summed over the dp group."""
        n = token_counts(labels, self.model_cfg.num_nextn_predict_layers) if local is None else local.clone()
        dist.all_reduce(n, group=self.meshes.dp.get_group())
        return n.clamp(min=1)

    def _token_scale(self, labels: torch.Tensor) -> torch.Tensor:
        """local tokens × dp / global tokens per loss term (model.loss.model_loss `scale`): the average
        over dp ranks of the scaled token means is the token mean of the global micro-batch."""
        local = token_counts(labels, self.model_cfg.num_nextn_predict_layers)
        return local * self.cfg.dp / self._global_tokens(labels, local)

    @staticmethod
    def _meta(batch: dict, ids: torch.Tensor) -> torch.Tensor:
        """(B,2,S) long: position_ids (restarting per document) and doc_ids of a packed batch."""
        doc = batch["doc_ids"].to(ids.device)
        pos = batch.get("position_ids")
        if pos is None:
            raise ValueError("a batch with doc_ids needs position_ids too (they restart at each document)")
        return torch.stack([pos.to(ids.device), doc], 1).long()


def token_counts(labels: torch.Tensor, depth: int) -> torch.Tensor:
    """(1+D,) float: positions with a target for the main loss and each of D MTP losses."""
    return torch.stack([(labels != IGNORE).sum()] + [(mtp_labels(labels, k) != IGNORE).sum()
                                                     for k in range(1, depth + 1)]).float()


def _all_moe_ids(cfg: ModelConfig) -> list[int]:
    n = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    return list(range(n + (cfg.num_nextn_predict_layers if cfg.n_routed_experts else 0)))


def merged_view(parts: list[nn.Module]) -> nn.Module:
    """One module holding this rank's stages under DeepSeekV3's attribute paths (same FQNs)."""
    if len(parts) == 1:
        return parts[0]
    v = nn.Module()
    v.model = nn.Module()
    v.model.layers = nn.ModuleDict()
    for p in parts:
        for name, child in p.model.named_children():
            if name == "layers":
                v.model.layers.update(child)
            else:
                setattr(v.model, name, child)
        for name in ("lm_head", "mtp"):
            if hasattr(p, name):
                setattr(v, name, getattr(p, name))
    return v


def parallelize(model: DeepSeekV3, meshes: Meshes, train: TrainConfig) -> tuple[list[nn.Module], object | None]:
    """PP split -> EP -> FSDP (torchtitan's order). Returns this rank's modules and the PP schedule."""
    cfg = meshes.cfg
    parts: list[nn.Module] = [model]
    if cfg.pp > 1:
        parts = build_stages(model, meshes.pp_rank, cfg.pp, cfg.pp_schedule, train.mtp_weight > 0, train.balance_alpha)
    for p in parts:
        if cfg.ep > 1:
            apply_expert_parallel(p, meshes.ep)
        if cfg.dp > 1:
            apply_fsdp(p, meshes)
    if cfg.pp == 1:
        return parts, None
    stages = pipeline_stages(parts, cfg.n_stages, meshes.device, meshes.pp_group)
    loss_fn = make_loss_fn(train.mtp_weight)
    schedule = build_schedule(stages, cfg.n_micro, loss_fn, cfg.pp_schedule)
    schedule.nanoseek_loss = loss_fn  # its .lm list holds the main CE per micro-batch, for logging
    return parts, schedule


def setup(model_cfg: ModelConfig, pcfg: ParallelConfig, train: TrainConfig, optim: OptimConfig) -> DistRun:
    """Meshes, the same seeded model on every rank, parallelized, and its AdamW."""
    meshes = build_meshes(pcfg, model_cfg)
    if model_cfg.tie_word_embeddings and meshes.cfg.pp > 1:
        raise ValueError("tie_word_embeddings with pp > 1 is not supported (embedding and head on different stages)")
    torch.manual_seed(train.seed)
    model = DeepSeekV3(model_cfg).to(meshes.device)
    gidx = {id(m): i for i, m in enumerate(model.moe_layers())}
    parts, schedule = parallelize(model, meshes, train)
    view = merged_view(parts)
    moes = sorted((gidx[id(m)], m) for p in parts for m in p.modules() if id(m) in gidx)
    opt = build_optimizer(view, optim, meshes.device)
    return DistRun(meshes, parts, view, opt, schedule, model_cfg, train, optim, moes=moes)


@torch.no_grad()
def clip_grad_norm(params: list[torch.Tensor], max_norm: float, pp_group=None) -> float:
    """Global L2 norm over all ranks' gradients; scale them like torch.nn.utils.clip_grad_norm_.

    Gradients live on different meshes (dense: dp, experts: edp × ep) and pipeline stages, so
    the squared norm is reduced per mesh (DTensor.full_tensor) and then summed over pp.
    """
    by_mesh: dict = {}
    for p in params:
        if p.grad is not None:
            by_mesh.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p.grad)
    sq = torch.zeros((), dtype=torch.float32)
    for gs in by_mesh.values():
        n = torch.nn.utils.get_total_norm(gs, 2.0)
        n = n.full_tensor() if isinstance(n, DTensor) else n
        sq = sq.to(n.device) + n.float() ** 2
    if pp_group is not None:
        dist.all_reduce(sq, group=pp_group)
    norm = float(sq.sqrt())
    coef = min(max_norm / (norm + 1e-6), 1.0)
    if coef < 1.0:
        for gs in by_mesh.values():
            for g in gs:
                g.mul_(coef)
    return norm


def local_batch(batch: dict, meshes: Meshes) -> dict:
    """This rank's rows of a global batch (every rank of one dp index sees the same rows)."""
    dp, r = meshes.cfg.dp, meshes.dp_rank
    return {k: v.chunk(dp)[r] for k, v in batch.items()}


def synthetic_batch(step: int, batch: int, seq: int, vocab: int, seed: int = 0, docs: int = 1) -> dict:
    """Deterministic random tokens (the same on every rank): input_ids and next-token labels (B,S).
    docs > 1 packs each row as up to `docs` documents at random boundaries: adds doc_ids and
    position_ids (restarting per document) and label -100 at each document's last token, as the
    pretraining loader's packed batches have (so ranks see unequal numbers of targets)."""
    g = torch.Generator().manual_seed(seed * 100003 + step)
    x = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    out = {"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous()}
    if docs > 1:
        starts = torch.rand(batch, seq, generator=g) < (docs - 1) / seq  # (B,S) a document starts here
        starts[:, 0] = True
        doc = starts.long().cumsum(1) - 1  # (B,S) 0, 0, 1, 1, 1, 2, ...
        first = torch.zeros_like(doc).scatter_reduce(1, doc, torch.arange(seq).expand(batch, seq), "amin", include_self=False)
        out.update(doc_ids=doc, position_ids=torch.arange(seq) - first.gather(1, doc))
        out["labels"][:, :-1][starts[:, 1:]] = -100  # no target at a document's last token, as the packer does
    return out


# ------------------------------------------------------------------------------------ CLI
def _args(argv):
    ap = argparse.ArgumentParser(prog="torchrun ... -m nanoseek.dist.run", description="k distributed training steps on synthetic tokens")
    ap.add_argument("--model", default="tiny", help="model preset or config path")
    ap.add_argument("--model-overrides", default="{}", help='JSON, e.g. {"num_hidden_layers": 4}')
    ap.add_argument("--dp", type=int, default=-1)
    ap.add_argument("--ep", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--schedule", default="1F1B", help="1F1B | DualPipeV | Interleaved1F1B")
    ap.add_argument("--microbatches", type=int, default=0)
    ap.add_argument("--param-dtype", default="float32")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8, help="global sequences per step")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--load", default=None, help="DCP checkpoint directory to resume from")
    ap.add_argument("--save", default=None, help="DCP checkpoint directory written at the end")
    ap.add_argument("--export", default=None, help="also write a single HF directory (save_pretrained) from --save")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _args(sys.argv[1:] if argv is None else argv)
    from .checkpoint import export_hf, load, save

    init_distributed(a.timeout)
    mcfg = ModelConfig.load(a.model).replace(**json.loads(a.model_overrides))
    pcfg = ParallelConfig(dp=a.dp, ep=a.ep, pp=a.pp, pp_schedule=a.schedule, microbatches=a.microbatches,
                          param_dtype=a.param_dtype, timeout_s=a.timeout)
    train = TrainConfig(steps=a.steps, batch_size=a.batch, seed=a.seed, device="cpu")
    optim = OptimConfig(lr=a.lr, warmup_steps=0, schedule="constant")
    run = setup(mcfg, pcfg, train, optim)
    if a.load:
        load(run, a.load)
    rank0 = dist.get_rank() == 0
    while run.step < a.steps:
        t = time.perf_counter()
        r = run.train_step(local_batch(synthetic_batch(run.step, a.batch, a.seq, mcfg.vocab_size, a.seed), run.meshes))
        if rank0:
            print(f"step {run.step:4d} | loss {r['loss']:.4f} | lm {r['lm']:.4f} | grad_norm {r['grad_norm']:.3f} | "
                  f"imbalance {r.get('imbalance_mean', 1.0):.2f} | {r['tokens'] / (time.perf_counter() - t):.0f} tok/s", flush=True)
    if a.save:
        save(run, a.save)
        if a.export and rank0:
            export_hf(a.save, a.export, mcfg)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

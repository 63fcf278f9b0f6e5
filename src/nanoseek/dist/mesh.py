"""The parallel layout (PP × DP, EP inside DP; no TP, as in V3 §3.2) and its device meshes.

World = pp × dp ranks, laid out rank = pp_rank·dp + dp_rank (pipeline outermost: stages usually
span nodes, data/expert parallelism stays inside the fast intra-node/EP network).
EP splits each dp group into edp × ep: the routed experts are sharded over `ep` ranks and each
expert shard is replicated (and FSDP-sharded) over the `edp = dp/ep` ranks holding the same one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ..model.config import ConfigError, ModelConfig

SCHEDULES = ("1F1B", "DualPipeV", "Interleaved1F1B")


class LayoutError(ConfigError):
    """The parallel layout does not fit the world size or the model; the message says how."""


@dataclass
class ParallelConfig:
    dp: int = -1  # data-parallel ranks (each sees different data); -1 = world // pp
    ep: int = 1  # expert-parallel ranks: each holds n_routed_experts / ep experts; must divide dp
    pp: int = 1  # pipeline ranks
    pp_schedule: str = "1F1B"  # "1F1B" (1 stage/rank) | "DualPipeV" | "Interleaved1F1B" (2 stages/rank, V placement)
    microbatches: int = 0  # pipeline micro-batches per step; 0 = 2 × number of stages
    fsdp: bool = True  # shard params/grads/optimizer over dp with FSDP2 (ZeRO-3); else replicate (DDP-like)
    reshard_after_forward: bool = True  # False = ZeRO-2 style: keep params gathered until backward
    param_dtype: str = "float32"  # FSDP compute dtype of params ("bfloat16" for mixed precision)
    reduce_dtype: str = "float32"  # gradient reduce-scatter dtype (V3 accumulates grads in fp32)
    timeout_s: float = 600.0  # collective timeout: a dead peer turns into an error, not a hang

    @property
    def stages_per_rank(self) -> int:
        return 1 if self.pp_schedule == "1F1B" else 2

    @property
    def n_stages(self) -> int:
        return self.pp * self.stages_per_rank

    @property
    def edp(self) -> int:
        return self.dp // self.ep

    @property
    def n_micro(self) -> int:
        return self.microbatches or 2 * self.n_stages

    def resolve(self, world: int, model: ModelConfig | None = None) -> "ParallelConfig":
        """Fill dp = -1 and check every constraint; raises LayoutError naming the problem."""
        for f in ("ep", "pp"):
            if getattr(self, f) < 1:
                raise LayoutError(f"ParallelConfig.{f} must be >= 1 (got {getattr(self, f)})")
        if world % self.pp:
            raise LayoutError(f"world size {world} is not divisible by pp={self.pp}")
        c = replace(self, dp=world // self.pp) if self.dp == -1 else self
        if c.dp * c.pp != world:
            raise LayoutError(f"dp × pp = {c.dp} × {c.pp} = {c.dp * c.pp} does not match the world size {world}")
        if c.dp % c.ep:
            raise LayoutError(f"ep={c.ep} must divide dp={c.dp}: experts are split inside each data-parallel group")
        if c.pp_schedule not in SCHEDULES:
            raise LayoutError(f"pp_schedule {c.pp_schedule!r} is not one of {', '.join(SCHEDULES)}")
        if c.pp > 1 and c.pp_schedule == "DualPipeV" and c.n_micro < c.n_stages:
            raise LayoutError(f"DualPipeV needs microbatches >= stages ({c.n_stages}); got {c.n_micro}")
        if model is not None:
            c.check_model(model)
        return c

    def check_model(self, m: ModelConfig) -> None:
        if self.ep > 1:
            if m.n_routed_experts == 0 or not m.is_moe:
                raise LayoutError(f"ep={self.ep} but the model has no MoE layers")
            if m.n_routed_experts % self.ep:
                raise LayoutError(f"n_routed_experts={m.n_routed_experts} is not divisible by ep={self.ep}")
        if self.pp > 1 and m.num_hidden_layers < self.n_stages:
            raise LayoutError(f"{m.num_hidden_layers} decoder layers cannot fill {self.n_stages} pipeline stages "
                              f"(pp={self.pp} × {self.stages_per_rank} stage(s) per rank for {self.pp_schedule}); "
                              "every stage needs at least one layer")

    @classmethod
    def from_dict(cls, d: dict) -> "ParallelConfig":
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown key parallel.{bad[0]}; known: {', '.join(sorted(known))}")
        return cls(**d)


@dataclass
class Meshes:
    """Process groups of one layout. `root` is (pp, edp, ep); `dp` flattens (edp, ep)."""

    cfg: ParallelConfig
    root: DeviceMesh
    dp: DeviceMesh  # 1-D, size cfg.dp: dense params' FSDP / gradient averaging
    device: torch.device

    @property
    def ep(self) -> DeviceMesh:
        return self.root["ep"]

    @property
    def edp(self) -> DeviceMesh:
        return self.root["edp"]

    @property
    def pp_group(self):
        return self.root.get_group("pp")

    @property
    def pp_rank(self) -> int:
        return self.root.get_local_rank("pp")

    @property
    def dp_rank(self) -> int:
        return self.dp.get_local_rank()


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() and os.environ.get("NANOSEEK_DIST_CPU") != "1" else "cpu"


def init_distributed(timeout_s: float = 600.0) -> torch.device:
    """init_process_group from torchrun's env (RANK, WORLD_SIZE, MASTER_ADDR/PORT); NCCL on GPU else gloo.

    The timeout bounds every collective, so a crashed peer makes the others raise instead of hanging.
    """
    dev = device_type()
    if dev == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return torch.device(dev, torch.cuda.current_device()) if dev == "cuda" else torch.device("cpu")


def build_meshes(cfg: ParallelConfig, model: ModelConfig | None = None) -> Meshes:
    """Resolve the layout against the world size and the model, then create the device meshes."""
    world = dist.get_world_size()
    cfg = cfg.resolve(world, model)
    dev = device_type()
    root = init_device_mesh(dev, (cfg.pp, cfg.edp, cfg.ep), mesh_dim_names=("pp", "edp", "ep"))
    dp = root["edp", "ep"]._flatten("dp") if hasattr(DeviceMesh, "_flatten") else \
        init_device_mesh(dev, (cfg.pp, cfg.dp), mesh_dim_names=("pp", "dp"))["dp"]
    d = torch.device(dev, torch.cuda.current_device()) if dev == "cuda" else torch.device("cpu")
    return Meshes(cfg, root, dp, d)

"""FSDP2 (`fully_shard`): one FSDP group per decoder block (main and MTP), experts on their own mesh.

Dense parameters are sharded over the dp mesh. Under EP the routed experts are already split over
`ep`; their shards are FSDP-sharded over the `edp` ranks that hold the same experts (torchtitan's
"efsdp"). Gradient scale: each rank's loss is its local mean, the global loss their mean over dp,
so every gradient must be divided by dp. FSDP divides by its own mesh size (dp for dense, edp for
experts); experts also receive the other ep ranks' contributions through the all-to-all backward,
hence their divide factor is set to dp as well.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from ..model.moe import MoE
from .mesh import Meshes


def blocks(model: nn.Module) -> list[nn.Module]:
    """Decoder layers then MTP modules present in `model` (a full model or a pipeline stage)."""
    inner = getattr(model, "model", None)
    layers = list(inner.layers.values() if isinstance(inner.layers, nn.ModuleDict) else inner.layers) if inner is not None else []
    return layers + list(getattr(model, "mtp", None) or [])


def _configure(m: FSDPModule, meshes: Meshes, size: int, factor: float | None = None) -> None:
    # gloo has no AVG / PREMUL_SUM: reduce with SUM, then divide. Not on a size-1 mesh, where torch
    # 2.13 would divide twice by a custom factor (its single-rank copy path and the post-divide).
    if meshes.device.type == "cpu" and size > 1 and hasattr(m, "set_force_sum_reduction_for_comms"):
        m.set_force_sum_reduction_for_comms(True)
    if factor is not None:
        m.set_gradient_divide_factor(factor)


def apply_fsdp(model: nn.Module, meshes: Meshes) -> nn.Module:
    """Bottom-up fully_shard: experts (edp mesh) -> each block (dp mesh) -> root (embedding, norm, head)."""
    cfg = meshes.cfg
    mp = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.param_dtype), reduce_dtype=getattr(torch, cfg.reduce_dtype))
    # Under PP keep params gathered between forward and backward (torchtitan's default too): each
    # micro-batch would re-gather them, and with DualPipeV's split input/weight backward a block
    # resharded after forward lost one micro-batch's weight gradient (torch 2.13, measured here).
    kw = dict(mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward and cfg.pp == 1)
    for block in blocks(model):
        for moe in (m for m in block.modules() if isinstance(m, MoE) and cfg.ep > 1):
            fully_shard(moe.experts, mesh=meshes.edp, **kw)
            _configure(moe.experts, meshes, cfg.edp, float(cfg.dp))
        fully_shard(block, mesh=meshes.dp, **kw)
        _configure(block, meshes, cfg.dp)
    # The root (embedding, final norm, lm_head) stays gathered after forward: the trainer's loss calls
    # model.lm_head on the returned hidden states outside model.forward (chunked cross-entropy).
    fully_shard(model, mesh=meshes.dp, **{**kw, "reshard_after_forward": False})
    _configure(model, meshes, cfg.dp)
    return model

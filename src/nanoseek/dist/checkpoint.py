"""Sharded checkpoints with torch.distributed.checkpoint (DCP).

Each rank writes only its shards; the metadata records every tensor's global shape and each
shard's offsets, keyed by the model's own FQNs (pipeline stages keep them, EP experts are
DTensors of the full (E, ...) stacks). Loading therefore works under any other layout and world
size: DCP reads the overlapping pieces. `export_hf` turns such a directory, offline and in one
process, into a single HF directory through `DeepSeekV3.save_pretrained`.

Layout of a checkpoint directory:  *.distcp + .metadata (DCP)   trainer.json (step, layout)
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from ..model import DeepSeekV3, ModelConfig


def _state(run) -> dict:
    return {"model": get_model_state_dict(run.view), "optim": get_optimizer_state_dict(run.view, run.opt)}


def save(run, path: str | Path) -> Path:
    """Collective: every rank writes its shards of model + optimizer state."""
    path = Path(path)
    dcp.save(_state(run), checkpoint_id=str(path))
    if dist.get_rank() == 0:
        meta = {"step": run.step, "model": run.model_cfg.to_dict(), "layout": vars(run.cfg).copy()}
        (path / "trainer.json").write_text(json.dumps(meta, indent=2))
    dist.barrier()
    return path


def load(run, path: str | Path) -> dict:
    """Collective: restore model + optimizer into this run's layout (any world size / layout)."""
    path = Path(path)
    meta = json.loads((path / "trainer.json").read_text())
    if ModelConfig.from_dict(meta["model"]) != run.model_cfg:
        raise ValueError(f"{path}: checkpoint model config differs from this run's")
    sd = _state(run)
    dcp.load(sd, checkpoint_id=str(path))
    set_model_state_dict(run.view, sd["model"])
    set_optimizer_state_dict(run.view, run.opt, sd["optim"])
    run.step = meta["step"]
    return meta


def full_state(run, optim: bool = False) -> dict:
    """Collective: unsharded CPU tensors on every rank (this rank's stages only under PP). For tests/export."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=False)
    out = {"model": {k: v.detach().cpu().clone() for k, v in get_model_state_dict(run.view, options=opts).items()}}
    if optim:
        out["optim"] = get_optimizer_state_dict(run.view, run.opt, options=opts)
    return out


def export_hf(ckpt: str | Path, out_dir: str | Path, cfg: ModelConfig | None = None, **save_kw) -> Path:
    """One process, no process group needed: DCP directory -> full model -> `save_pretrained(out_dir)`."""
    ckpt = Path(ckpt)
    cfg = cfg or ModelConfig.from_dict(json.loads((ckpt / "trainer.json").read_text())["model"])
    model = DeepSeekV3(cfg)
    sd = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(sd, checkpoint_id=str(ckpt), no_dist=True)  # fills the tensors in place, reading every shard
    model.load_state_dict(sd["model"])
    model.save_pretrained(out_dir, **save_kw)
    return Path(out_dir)

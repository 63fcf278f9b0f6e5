"""Training checkpoints: HF-loadable model + optimizer + trainer state, written atomically.

Layout of `<run>/checkpoints/step_000123/`:
  model/            config.json + model.safetensors (the core HF adapter; router biases included)
  optimizer.pt      optimizer state_dict
  rng.pt            torch / cuda / numpy / python RNG states
  state.json        step, data-loader position, configs, metrics needed to resume
  COMPLETE          written last; a directory without it is not a checkpoint
A checkpoint is built in a temporary directory and renamed into place, so a kill at any moment
leaves either the old set or the new one, never a half-written `step_*`.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..model.hf import CheckpointError, load_into, read_safetensors, replace_dir, save_pretrained

_STEP = re.compile(r"^step_(\d+)$")


def list_checkpoints(run_dir: Path) -> list[Path]:
    d = Path(run_dir) / "checkpoints"
    if not d.exists():
        return []
    return sorted((p for p in d.iterdir() if _STEP.match(p.name)), key=lambda p: int(_STEP.match(p.name).group(1)))


def save_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict, keep_last: int) -> Path:
    ck_root = Path(run_dir) / "checkpoints"
    ck_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-step-", dir=ck_root))
    try:
        save_pretrained(model, tmp / "model", mtp_duplicates=False)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        (tmp / "COMPLETE").write_text("ok\n")
        final = ck_root / f"step_{step:06d}"
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore model, optimizer and RNG in place; returns state.json. Fails naming what is wrong."""
    path = Path(path)
    if not (path / "COMPLETE").exists():
        raise CheckpointError(f"{path}: incomplete checkpoint (no COMPLETE marker); refusing to resume from it")
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}/state.json: unreadable ({e})") from e
    saved_cfg = json.loads((path / "model" / "config.json").read_text())
    from ..model.config import ModelConfig

    if ModelConfig.from_hf(saved_cfg) != model.config:
        diff = [k for k, v in ModelConfig.from_hf(saved_cfg).to_dict().items() if model.config.to_dict()[k] != v]
        raise CheckpointError(f"{path}: checkpoint model config differs from this run's in {', '.join(diff)}")
    load_into(model, {k: v.float() if v.is_floating_point() else v for k, v in read_safetensors(path / "model").items()})
    try:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    except Exception as e:
        raise CheckpointError(f"{path}: cannot restore optimizer/RNG state ({type(e).__name__}: {e})") from e
    return state


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])

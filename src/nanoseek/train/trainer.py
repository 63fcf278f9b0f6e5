"""The training loop shared by pretraining, SFT and distillation.

Per optimizer step: k micro-batches (batch-size ramp) of forward (bf16 autocast on GPU, fp32 on
CPU) -> L_main + λ·L_MTP + α·L_Bal -> backward; clip at 1.0; AdamW; then the aux-loss-free
router-bias update from that step's expert loads. Deterministic for a seed; resumable exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model import DeepSeekV3, load_imbalance, model_loss, update_router_bias
from ..model.hf import CheckpointError
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .config import OptimConfig, TrainConfig
from .metrics import MetricsLogger, Timer, step_line
from .optim import build_optimizer, lr_at, micro_batches_at

LossFn = Callable[[DeepSeekV3, dict, TrainConfig], tuple[torch.Tensor, dict]]


def default_loss(model: DeepSeekV3, batch: dict, cfg: TrainConfig, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Next-token CE + λ·MTP + α·balance on a packed batch (input_ids, labels, position_ids, doc_ids).
    scale: see model.loss.model_loss (data-parallel token weighting)."""
    out = model(batch["input_ids"], position_ids=batch.get("position_ids"), doc_ids=batch.get("doc_ids"),
                compute_logits=False, mtp=cfg.mtp_weight > 0)
    parts = model_loss(model, out, batch["labels"], cfg.mtp_weight, cfg.balance_alpha, cfg.ce_chunk, scale)
    stats = {"lm": parts.lm, "router_counts": out.router_counts}
    if parts.mtp is not None:
        stats["mtp"] = parts.mtp
    if parts.balance is not None:
        stats["balance"] = parts.balance
    return parts.total, stats


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def autocast_ctx(device: torch.device, precision: str):
    if precision in ("bf16", "fp8") or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class MFUInfo:
    flops_per_token: float | None  # training FLOPs per token (fwd + bwd)
    peak: float | None  # device peak FLOP/s for the precision, None when unknown


class Trainer:
    def __init__(self, model: DeepSeekV3, optim_cfg: OptimConfig, cfg: TrainConfig, run_dir: Path,
                 train_iter: Iterator[dict], eval_fn: Callable[[DeepSeekV3], dict] | None = None,
                 loss_fn: LossFn = default_loss, config_dict: dict | None = None, mfu: MFUInfo | None = None,
                 tokenizer_dir: Path | None = None) -> None:
        self.cfg, self.optim_cfg, self.run_dir = cfg, optim_cfg, Path(run_dir)
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device)
        self.train_iter, self.eval_fn, self.loss_fn = train_iter, eval_fn, loss_fn
        self.opt = build_optimizer(self.model, optim_cfg, self.device)
        self.config_dict = config_dict or {}
        self.mfu = mfu or MFUInfo(None, None)
        self.tokenizer_dir = tokenizer_dir
        self.step = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.fwd = torch.compile(self.loss_fn) if cfg.compile else self.loss_fn

    # ---- resume ------------------------------------------------------------------------------
    def maybe_resume(self) -> bool:
        cks = list_checkpoints(self.run_dir)
        if not cks:
            return False
        state = load_checkpoint(cks[-1], self.model, self.opt)
        if state.get("config") and self.config_dict and _resume_key(state["config"]) != _resume_key(self.config_dict):
            raise CheckpointError(f"{cks[-1]}: the run's configuration changed since this checkpoint "
                                  f"(model/data/optim/train.batch settings must match to resume)")
        self.step, self.tokens_seen, self.train_seconds = state["step"], state["tokens_seen"], state["train_seconds"]
        if hasattr(self.train_iter, "load_state_dict"):
            self.train_iter.load_state_dict(state["data"])
        return True

    def save(self) -> Path:
        data = self.train_iter.state_dict() if hasattr(self.train_iter, "state_dict") else {}
        return save_checkpoint(self.run_dir, self.step, self.model, self.opt,
                               {"tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds, "data": data,
                                "config": self.config_dict}, self.cfg.keep_last)

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        cfg = self.cfg
        resumed = self.maybe_resume() if resume else False
        if not resumed and list_checkpoints(self.run_dir):
            raise CheckpointError(f"{self.run_dir} already has checkpoints; pass --resume to continue it or use a new out_dir")
        log = MetricsLogger(self.run_dir, cfg.steps, self.step, cfg.progress, cfg.tensorboard, append=resumed)
        if resumed:
            log.print(f"resumed from step {self.step} ({self.tokens_seen:,} tokens)")
        elif resume:  # torchtitan's behaviour: --resume on an empty run dir starts it, and says so
            log.print(f"resume: no checkpoint in {self.run_dir / 'checkpoints'}; starting from step 0")
        self.model.train()
        last = {}
        while self.step < cfg.steps:
            t = Timer()
            rec = self.train_step()
            dt = t.lap()
            self.train_seconds += dt
            self.step += 1
            last = self._step_record(rec, dt)
            eta = (cfg.steps - self.step) * self.train_seconds / max(1, self.step)  # mean step time so far
            log.log(last, step_line(self.step, cfg.steps, last, eta) if self.step % cfg.log_every == 0 else None)
            log.advance()
            if self.eval_fn and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                ev = {"step": self.step, **self.eval_fn(self.model)}
                self.model.train()
                log.log(ev, "  eval | " + " | ".join(f"{k} {v:.4f}" for k, v in ev.items() if k != "step"))
                last.update(ev)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.save()
        log.close()
        return last

    def train_step(self) -> dict:
        cfg, dev = self.cfg, self.device
        lr = lr_at(self.step, self.optim_cfg, cfg.steps)
        for g in self.opt.param_groups:
            g["lr"] = lr
        k = micro_batches_at(self.step, cfg)
        counts, sums, ntok = None, {}, 0
        for _ in range(k):
            batch = {n: v.to(dev, non_blocking=True) for n, v in next(self.train_iter).items()}
            with autocast_ctx(dev, cfg.precision):
                loss, stats = self.fwd(self.model, batch, cfg)
            (loss / k).backward()
            ntok += batch["input_ids"].numel()
            rc = stats.pop("router_counts", None)
            if rc is not None:
                counts = rc if counts is None else counts + rc
            for n, v in [("loss", loss.detach()), *stats.items()]:
                sums[n] = sums.get(n, 0.0) + v.float() / k
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if counts is not None and cfg.bias_gamma > 0:
            update_router_bias(self.model, counts, cfg.bias_gamma)
        self.tokens_seen += ntok
        out = {n: float(v) for n, v in sums.items()}  # one host sync per step, after the update
        out.update(lr=lr, grad_norm=float(gn), tokens=ntok, micro_batches=k)
        if counts is not None:
            imb = load_imbalance(counts)
            out["imbalance_mean"], out["imbalance_max"] = float(imb.mean()), float(imb.max())
            out["imbalance_per_layer"] = [round(float(x), 3) for x in imb]
        return out

    def _step_record(self, r: dict, dt: float) -> dict:
        tps = r["tokens"] / dt
        m = {"step": self.step, "train/loss": r["loss"], "train/lm_loss": r["lm"], "train/lr": r["lr"],
             "train/grad_norm": r["grad_norm"], "train/tokens_seen": self.tokens_seen, "train/micro_batches": r["micro_batches"],
             "perf/step_s": dt, "perf/tokens_per_s": tps}
        if "mtp" in r:
            m["train/mtp_loss"] = r["mtp"]
        if "balance" in r:
            m["train/balance_loss"] = r["balance"]
        if hasattr(self.train_iter, "useful_fraction"):  # packed data: share of positions with a loss term
            m["data/useful_fraction"] = self.train_iter.useful_fraction
        if self.mfu.flops_per_token and self.mfu.peak:
            m["perf/mfu"] = tps * self.mfu.flops_per_token / self.mfu.peak
        if "imbalance_mean" in r:
            m["moe/imbalance_mean"], m["moe/imbalance_max"] = r["imbalance_mean"], r["imbalance_max"]
            m["moe/imbalance_per_layer"] = r["imbalance_per_layer"]
        return m


def _resume_key(cfg: dict) -> str:
    """What must not change across a resume: everything but the step budget, logging and I/O cadence."""
    c = json.loads(json.dumps(cfg))
    for k in ("steps", "log_every", "eval_every", "eval_batches", "ckpt_every", "keep_last", "tensorboard", "progress", "device"):
        c.get("train", {}).pop(k, None)
    if not c.get("parallel"):  # single-process runs (and checkpoints from before the key existed)
        c.pop("parallel", None)
    return json.dumps(c, sort_keys=True)

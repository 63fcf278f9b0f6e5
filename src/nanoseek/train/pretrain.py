"""`nanoseek pretrain`: data -> tokenizer -> packed shards -> DeepSeek-V3 pretraining -> run directory.

Run directory:
  config.json        the resolved PretrainConfig
  data/              prepared dataset (tokenizer.json, meta.json, filter_report.json, train/, val/)
  metrics.jsonl      one record per step and per evaluation
  checkpoints/       resumable checkpoints (last K)
  model/             final HF-format model + tokenizer.json (what `nanoseek generate RUN` loads)
  cost.json          tokens, wall time, device-hours, MFU, dollars
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..data import Tokenizer, build_loader, prepare_dataset
from ..data.shards import TokenShards
from ..model import DeepSeekV3, ModelConfig
from ..model.hf import CheckpointError, save_pretrained
from .config import PretrainConfig
from .trainer import MFUInfo, Trainer, autocast_ctx, pick_device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(cfg: PretrainConfig, run_dir: Path, progress: bool) -> Path:
    """Prepare (or reuse) the tokenized dataset; reused only if the data config is unchanged."""
    data_dir = run_dir / "data"
    key = hashlib.sha256(json.dumps(cfg.data.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    stamp = data_dir / "config_hash.txt"
    if stamp.exists() and stamp.read_text().strip() == key and (data_dir / "meta.json").exists():
        return data_dir
    meta = prepare_dataset(cfg.data, data_dir, progress=progress)
    stamp.write_text(key)
    print(f"data: {meta.get('train', {}).get('tokens', '?')} train tokens, vocab {meta['vocab_size']} -> {data_dir}")
    return data_dir


def make_eval_fn(cfg: PretrainConfig, data_dir: Path, tok: Tokenizer, device: torch.device):
    """Validation loss and bits per byte on the held-out documents (first `eval_batches` batches)."""
    val = TokenShards(data_dir / "val")
    if len(val) == 0:
        return None
    n_bytes = sum(len(tok.decode(val[i].tolist()).encode("utf-8")) for i in range(len(val)))
    bytes_per_token = n_bytes / max(1, sum(len(val[i]) for i in range(len(val))))

    @torch.no_grad()
    def evaluate(model: DeepSeekV3) -> dict:
        model.eval()
        total, count = 0.0, 0
        loader = build_loader(cfg.data, data_dir, "val", cfg.train.batch_size)
        for i, batch in enumerate(loader):
            if i >= cfg.train.eval_batches:
                break
            b = {k: v.to(device) for k, v in batch.items()}
            with autocast_ctx(device, cfg.train.precision):
                out = model(b["input_ids"], position_ids=b["position_ids"], doc_ids=b["doc_ids"], compute_logits=False)
                from ..model.loss import cross_entropy

                n = int((b["labels"] != -100).sum())
                total += float(cross_entropy(model, out.hidden, b["labels"], cfg.train.ce_chunk)) * n
                count += n
        loss = total / max(1, count)
        return {"val/loss": loss, "val/bpb": loss / math.log(2) / bytes_per_token}

    return evaluate


def mfu_info(model_cfg: ModelConfig, seq_len: int, device: torch.device, precision: str) -> MFUInfo:
    """Training FLOPs/token (attention at seq_len, active experts, MTP) and the GPU's dense peak;
    an unknown GPU or a CPU gets no peak, so no MFU is reported rather than a guess."""
    from ..cost import current, flops_per_token, peak_flops

    peak = peak_flops(current(), "fp8" if precision == "fp8" else "bf16") if device.type == "cuda" else None
    return MFUInfo(flops_per_token(model_cfg, seq_len, mtp=model_cfg.num_nextn_predict_layers > 0).total, peak)


def run_pretrain(cfg: PretrainConfig, resume: bool = False) -> Path:
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.json"
    if resume and saved.exists() and json.loads(saved.read_text()).get("data") != json.loads(json.dumps(cfg.to_dict()))["data"]:
        raise CheckpointError(f"{saved}: data config differs from the one this run was started with")
    saved.write_text(json.dumps(cfg.to_dict(), indent=2))
    t0 = time.time()
    data_dir = prepare_data(cfg, run_dir, cfg.train.progress)
    tok = Tokenizer.load(data_dir)
    model_cfg = cfg.model_config(vocab_size=tok.vocab_size)
    if model_cfg.vocab_size < tok.vocab_size:
        raise CheckpointError(f"model vocab_size {model_cfg.vocab_size} < tokenizer vocab {tok.vocab_size}")
    seed_everything(cfg.train.seed)
    model = DeepSeekV3(model_cfg)
    if cfg.train.precision == "fp8":
        from ..fp8 import convert_to_fp8

        convert_to_fp8(model)
    device = pick_device(cfg.train.device)
    loader = build_loader(cfg.data, data_dir, "train", cfg.train.batch_size)
    trainer = Trainer(model, cfg.optim, cfg.train, run_dir, loader, make_eval_fn(cfg, data_dir, tok, device),
                      config_dict=cfg.to_dict(), mfu=mfu_info(model_cfg, cfg.data.seq_len, device, cfg.train.precision))
    n_total, n_active = model.num_params(), model.num_params(active=True)
    print(f"model: {n_total / 1e6:.2f}M params ({n_active / 1e6:.2f}M active) on {device}; "
          f"{cfg.train.steps} steps × {cfg.train.batch_size}×{cfg.data.seq_len} tokens × {cfg.train.grad_accum} micro-batches")
    last = trainer.fit(resume=resume)
    final = save_pretrained(trainer.model, run_dir / "model")
    tok.save(final)
    write_cost(run_dir, trainer, device, time.time() - t0, last)
    print(f"done: {run_dir} (final model in {final})")
    return run_dir


def write_cost(run_dir: Path, trainer: Trainer, device: torch.device, wall: float, last: dict) -> None:
    """The run's measured cost: device-hours of training time, dollars at the configured price."""
    hours = trainer.train_seconds / 3600
    rec = {"stage": "pretrain", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "tokens": trainer.tokens_seen, "train_seconds": trainer.train_seconds, "wall_seconds": wall,
           "device_hours": hours, "mfu": last.get("perf/mfu"), "tokens_per_s": trainer.tokens_seen / max(trainer.train_seconds, 1e-9),
           "price_per_hour": trainer.cfg.gpu_price_per_hour if device.type == "cuda" else 0.0}
    rec["dollars"] = rec["device_hours"] * rec["price_per_hour"]
    (run_dir / "cost.json").write_text(json.dumps(rec, indent=2))

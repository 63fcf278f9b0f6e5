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
import os
import random
import shutil
import sys
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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun with several processes
        return run_pretrain_dist(cfg, resume)
    if any(int(cfg.parallel.get(k, 1)) > 1 for k in ("ep", "pp")) or int(cfg.parallel.get("dp", -1)) > 1:
        print("note: the parallel layout applies under torchrun only (torchrun --nproc_per_node=N -m nanoseek pretrain ...); "
              "training in this single process", file=sys.stderr)
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


def write_cost(run_dir: Path, trainer: Trainer, device: torch.device, wall: float, last: dict, n_devices: int = 1) -> None:
    """The run's measured cost: device-hours of training time, dollars at the configured price."""
    hours = trainer.train_seconds / 3600 * n_devices
    rec = {"stage": "pretrain", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "tokens": trainer.tokens_seen, "train_seconds": trainer.train_seconds, "wall_seconds": wall,
           "device_hours": hours, "mfu": last.get("perf/mfu"), "tokens_per_s": trainer.tokens_seen / max(trainer.train_seconds, 1e-9),
           "price_per_hour": trainer.cfg.gpu_price_per_hour if device.type == "cuda" else 0.0}
    rec["dollars"] = rec["device_hours"] * rec["price_per_hour"]
    (run_dir / "cost.json").write_text(json.dumps(rec, indent=2))


# ------------------------------------------------------------------------------ torch.distributed
def _prepare_run_dir(cfg: PretrainConfig, run_dir: Path, resume: bool) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.json"
    if resume and saved.exists() and json.loads(saved.read_text()).get("data") != json.loads(json.dumps(cfg.to_dict()))["data"]:
        raise CheckpointError(f"{saved}: data config differs from the one this run was started with")
    saved.write_text(json.dumps(cfg.to_dict(), indent=2))
    return prepare_data(cfg, run_dir, cfg.train.progress)


def run_pretrain_dist(cfg: PretrainConfig, resume: bool = False) -> Path:
    """`torchrun --nproc_per_node=N -m nanoseek pretrain ... --parallel.dp/ep/pp`: the same job on a layout.

    Rank 0 prepares the data (the others wait), every data-parallel rank reads its rows of each global
    batch (train.batch_size per dp rank: the global batch is batch_size × dp), `dist.run.DistRun` does the
    step, rank 0 logs metrics.jsonl, checkpoints are DCP directories (checkpoints/step_N, resumable under
    the same layout) and the final one is exported to run_dir/model as in a single-process run.
    """
    import torch.distributed as dist

    from ..dist import checkpoint as dck
    from ..dist.mesh import init_distributed
    from ..dist.run import setup
    from ..model.config import ConfigError
    from .checkpoint import list_checkpoints
    from .metrics import MetricsLogger, Timer, step_line
    from .optim import micro_batches_at
    from .trainer import _resume_key

    world = int(os.environ["WORLD_SIZE"])
    pcfg = cfg.parallel_config().resolve(world, cfg.model_config())  # a bad layout fails here, naming the problem
    if cfg.train.precision in ("bf16", "fp8"):
        raise ConfigError(f"train.precision={cfg.train.precision} is not supported under torchrun; use "
                          "--parallel.param_dtype bfloat16 for bf16 compute (FSDP mixed precision)")
    if cfg.train.compile:
        raise ConfigError("train.compile is not supported under torchrun yet")
    if pcfg.pp > 1 and cfg.train.batch_size % pcfg.n_micro:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} (sequences per dp rank) must be a multiple of the "
                          f"{pcfg.n_micro} pipeline micro-batches; change it or parallel.microbatches")
    if cfg.train.device == "cpu":
        os.environ["NANOSEEK_DIST_CPU"] = "1"
    t0 = time.time()
    init_distributed(pcfg.timeout_s)
    try:
        rank0 = dist.get_rank() == 0
        run_dir = Path(cfg.out_dir)
        err = [None]
        if rank0:  # data preparation happens once; the other ranks wait for it
            try:
                _prepare_run_dir(cfg, run_dir, resume)
            except Exception as e:
                err[0] = f"{type(e).__name__}: {e}"
                dist.broadcast_object_list(err, src=0)
                raise
        dist.broadcast_object_list(err, src=0)
        if err[0]:
            raise ConfigError(f"rank 0 failed to prepare the run: {err[0]}")
        data_dir = run_dir / "data"
        tok = Tokenizer.load(data_dir)
        model_cfg = cfg.model_config(vocab_size=tok.vocab_size)
        if model_cfg.vocab_size < tok.vocab_size:
            raise CheckpointError(f"model vocab_size {model_cfg.vocab_size} < tokenizer vocab {tok.vocab_size}")
        seed_everything(cfg.train.seed)
        run = setup(model_cfg, pcfg, cfg.train, cfg.optim)
        m = run.meshes
        loader = build_loader(cfg.data, data_dir, "train", cfg.train.batch_size, rank=m.dp_rank, world_size=m.cfg.dp)
        device = m.device
        mfu = mfu_info(model_cfg, cfg.data.seq_len, device, cfg.train.precision)
        tokens_seen, train_seconds = 0, 0.0
        cks = list_checkpoints(run_dir)
        resumed = bool(resume and cks)
        if cks and not resume:
            raise CheckpointError(f"{run_dir} already has checkpoints; pass --resume to continue it or use a new out_dir")
        if resumed:
            ck = cks[-1]
            if not (ck / "run_state.json").exists() or not (ck / ".metadata").exists():
                raise CheckpointError(f"{ck} is not a distributed (DCP) checkpoint; resume it without torchrun")
            state = json.loads((ck / "run_state.json").read_text())
            if _resume_key(state["config"]) != _resume_key(cfg.to_dict()):
                raise CheckpointError(f"{ck}: the run's configuration (or parallel layout) changed since this checkpoint")
            dck.load(run, ck)
            loader.load_state_dict(state["data"])
            tokens_seen, train_seconds = state["tokens_seen"], state["train_seconds"]

        def save() -> Path:
            root = run_dir / "checkpoints"
            final, tmp = root / f"step_{run.step:06d}", root / f".tmp-dcp-step_{run.step:06d}"
            if rank0:
                shutil.rmtree(tmp, ignore_errors=True)
            dist.barrier()
            dck.save(run, tmp)  # collective: each rank writes its shards
            if rank0:
                (tmp / "run_state.json").write_text(json.dumps(
                    {"step": run.step, "tokens_seen": tokens_seen, "train_seconds": train_seconds,
                     "data": loader.state_dict(), "config": cfg.to_dict()}))
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
                for old in list_checkpoints(run_dir)[:-cfg.train.keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
            dist.barrier()
            return final

        t = cfg.train
        log = MetricsLogger(run_dir, t.steps, run.step, t.progress, t.tensorboard, append=resumed) if rank0 else None
        if rank0:
            if resumed:
                log.print(f"resumed from step {run.step} ({tokens_seen:,} tokens)")
            print(f"model: {model_cfg.num_hidden_layers} layers on {world} ranks (dp={m.cfg.dp} ep={m.cfg.ep} pp={m.cfg.pp}) "
                  f"on {device}; {t.steps} steps × {t.batch_size}×{m.cfg.dp}×{cfg.data.seq_len} tokens × {t.grad_accum} micro-batches",
                  flush=True)
        last: dict = {}
        start = run.step
        ck = None
        while run.step < t.steps:
            timer = Timer()
            k = micro_batches_at(run.step, t)
            bs = [next(loader) for _ in range(k)]  # this dp rank's rows of k global micro-batches
            r = run.train_step({n: torch.cat([b[n] for b in bs]) for n in bs[0]})
            dt = timer.lap()
            train_seconds += dt
            tokens_seen += r["tokens"]
            if rank0:
                tps = r["tokens"] / dt
                last = {"step": run.step, "train/loss": r["loss"], "train/lm_loss": r["lm"], "train/lr": r["lr"],
                        "train/grad_norm": r["grad_norm"], "train/tokens_seen": tokens_seen, "train/micro_batches": k,
                        "perf/step_s": dt, "perf/tokens_per_s": tps, "data/useful_fraction": loader.useful_fraction}
                if mfu.flops_per_token and mfu.peak:
                    last["perf/mfu"] = tps * mfu.flops_per_token / (mfu.peak * world)
                if "imbalance_mean" in r:
                    from ..model import load_imbalance

                    last["moe/imbalance_mean"], last["moe/imbalance_max"] = r["imbalance_mean"], r["imbalance_max"]
                    last["moe/imbalance_per_layer"] = [round(float(x), 3) for x in load_imbalance(r["router_counts"])]
                eta = (t.steps - run.step) * train_seconds / max(1, run.step - start)
                log.log(last, step_line(run.step, t.steps, last, eta) if run.step % t.log_every == 0 else None)
                log.advance()
            if run.step % t.ckpt_every == 0 or run.step == t.steps:
                ck = save()
        if ck is None:  # resumed at the end: export the last checkpoint
            ck = list_checkpoints(run_dir)[-1]
        if rank0:
            final = dck.export_hf(ck, run_dir / "model", model_cfg)
            tok.save(final)
            eval_fn = make_eval_fn(cfg, data_dir, tok, torch.device("cpu"))
            if eval_fn is not None and t.eval_batches > 0:  # held-out loss of the final model (not at eval_every)
                from ..model.hf import from_pretrained

                ev = {"step": run.step, **eval_fn(from_pretrained(final))}
                log.log(ev, "  eval | " + " | ".join(f"{k} {v:.4f}" for k, v in ev.items() if k != "step"))
                last.update(ev)
            log.close()
            from types import SimpleNamespace

            write_cost(run_dir, SimpleNamespace(train_seconds=train_seconds, tokens_seen=tokens_seen, cfg=t),
                       device, time.time() - t0, last, n_devices=world)
            print(f"done: {run_dir} (final model in {final})", flush=True)
        dist.barrier()
        return run_dir
    finally:
        dist.destroy_process_group()

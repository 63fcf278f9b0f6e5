"""The whole pipeline on built-in defaults (the README's main job).

CPU: the tiny-cpu preset, a few minutes on 2 cores. GPU: the small-gpu preset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek speedrun")
    ap.add_argument("--out", default=None, help="run directory (default runs/speedrun-{cpu,gpu})")
    ap.add_argument("--steps", type=int, default=None, help="pretraining steps (default from the preset)")
    a = ap.parse_args(argv)
    import torch

    from .train.config import PretrainConfig, load_config
    from .train.pretrain import run_pretrain

    gpu = torch.cuda.is_available()
    over = {"out_dir": a.out or f"runs/speedrun-{'gpu' if gpu else 'cpu'}"}
    if a.steps:
        over["train"] = {"steps": a.steps}
    cfg = load_config(PretrainConfig, "pretrain", "small-gpu" if gpu else "tiny-cpu", over)
    run = run_pretrain(cfg, resume=(Path(cfg.out_dir) / "checkpoints").exists())
    from .inference import load_for_inference

    model, tok = load_for_inference(run)
    prompts = ["def ", "<｜User｜>What is 12 + 35?<｜Assistant｜><think>"]
    outs = model.generate([tok.encode(p, add_bos=True) for p in prompts], max_new_tokens=60, temperature=0.0,
                          stop_tokens=(tok.eos_id,), pad_id=tok.pad_id or 0)
    print("\nsamples (greedy):")
    for p, o in zip(prompts, outs):
        print(f"  {p!r} -> {tok.decode(o)!r}")
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    vals = [m for m in metrics if "val/loss" in m]
    print(f"\nsummary: train loss {losses[0]:.3f} -> {losses[-1]:.3f}"
          + (f"; val loss {vals[-1]['val/loss']:.3f}, {vals[-1]['val/bpb']:.3f} bits/byte" if vals else "")
          + f"\nrun directory: {run}  (nanoseek generate {run} --prompt 'def ')")
    return 0

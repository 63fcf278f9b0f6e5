"""`nanoseek <stage>`: one thin command per pipeline stage; the work lives in the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _pretrain(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek pretrain", description="Pretrain DeepSeek-V3 on built-in or your data. "
                                 "Any config key can be overridden: --optim.lr 3e-4 --train.steps 100 --data.sources '[\"my/dir\"]'")
    ap.add_argument("--config", default=None, help="preset name (tiny-cpu, small-gpu) or a JSON file; default: small-gpu with CUDA else tiny-cpu")
    ap.add_argument("--data", default=None, help="your own data: a file or folder (text, .jsonl, .parquet)")
    ap.add_argument("--out", default=None, help="run directory (default from the config)")
    ap.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    args, rest = ap.parse_known_args(argv)
    from .train.config import PretrainConfig, load_config, parse_overrides

    over = parse_overrides(rest)
    if args.data:
        over.setdefault("data", {})["sources"] = [args.data]
    if args.out:
        over["out_dir"] = args.out
    cfg = load_config(PretrainConfig, "pretrain", args.config or _default_preset(), over)
    from .train.pretrain import run_pretrain

    run_pretrain(cfg, resume=args.resume)
    return 0


def _default_preset() -> str:
    import torch

    return "small-gpu" if torch.cuda.is_available() else "tiny-cpu"


def _generate(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek generate", description="Sample from a run directory or an HF model directory.")
    ap.add_argument("path", help="run directory (uses RUN/model) or a model directory with tokenizer.json")
    ap.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    from .inference import load_for_inference

    model, tok = load_for_inference(a.path, a.device)
    prompts = a.prompt or [""]
    ids = [tok.encode(p, add_bos=True) for p in prompts]
    outs = model.generate(ids, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                          top_p=a.top_p, seed=a.seed, stop_tokens=(tok.eos_id,), pad_id=tok.pad_id or 0)
    for p, o in zip(prompts, outs):
        print(f"--- prompt: {p!r}\n{p}{tok.decode(o)}")
    return 0


def _speedrun(argv: list[str]) -> int:
    """The README's main job: built-in data -> tokenizer -> pretrain -> samples (later stages plug in here)."""
    from .speedrun import main as speedrun_main

    return speedrun_main(argv)


def _lazy(module: str, fn: str):
    """Import a stage only when its command runs (keeps `nanoseek --help` fast)."""
    def run(argv: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(f"nanoseek.{module}"), fn)(argv)

    return run


COMMANDS = {
    "pretrain": (_pretrain, "pretrain on built-in data or --data (resumable)"),
    "generate": (_generate, "sample text from a run or model directory"),
    "speedrun": (_speedrun, "the whole pipeline on built-in defaults"),
    "sft": (_lazy("r1.sft", "main_sft"), "supervised fine-tuning on conversations (assistant-only loss; resumable)"),
    "eval": (_lazy("r1.evaluate", "main_eval"), "pass@1 / cons@k / format rate on a task or JSONL (R1 protocol)"),
    "sample": (_lazy("r1.sample", "main_sample"), "rejection sampling: keep correct, well-formed samples as SFT JSONL"),
    "distill": (_lazy("r1.distill", "main_distill"), "teacher traces -> small dense student (SFT, optional logit KD)"),
    "chat": (_lazy("r1.chat", "main_chat"), "interactive chat with streaming and a separate <think> display"),
    "grpo": (_lazy("r1.grpo", "main_grpo"), "GRPO on a verifiable task from a pretrained/SFT run (resumable)"),
    "ppo": (_lazy("r1.ppo", "main_ppo"), "PPO with a learned critic (the GRPO baseline, claim C3)"),
    "r1": (_lazy("r1.pipeline", "main_r1"), "the R1 pipeline: SFT -> GRPO -> rejection SFT -> GRPO, evaluated per stage"),
    "cost": (_lazy("cost.report", "main_cost"), "FLOPs, GPU-hours, dollars and memory for a config; --v3-table"),
    "report": (_lazy("report", "main_report"), "markdown report with plots for a run directory"),
    "plan": (_lazy("dist.plan", "main_plan"), "memory, all-to-all volume and pipeline bubbles of a parallel layout"),
    "ablate": (_lazy("ablate", "main_ablate"), "small matched experiments for the seeds' claims C1-C12"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: nanoseek <command> [options]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<10} {help_}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"nanoseek: unknown command {cmd!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from .model.config import ConfigError
    from .model.hf import CheckpointError

    try:
        return COMMANDS[cmd][0](rest) or 0
    except (ConfigError, CheckpointError) as e:
        print(f"nanoseek {cmd}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .data.sources import DataError

        if isinstance(e, DataError):
            print(f"nanoseek {cmd}: data error: {e}", file=sys.stderr)
            return 2
        raise

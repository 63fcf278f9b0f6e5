"""The whole pipeline on built-in defaults (the README's main job).

built-in data -> tokenizer -> pretrain -> cold-start SFT -> GRPO -> rejection-sampling SFT -> GRPO,
a held-out evaluation after every stage, then the run report (markdown + plots). Sized to run in
about ten minutes on 2 CPU cores (`presets/r1/speedrun-cpu.json`); with a GPU the default is the
larger `presets/r1/speedrun-gpu.json` (the `small` model). Every stage is resumable, so re-running
the command continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek speedrun")
    ap.add_argument("--out", default="runs/speedrun", help="run directory")
    ap.add_argument("--config", default=None,
                    help="r1 pipeline preset or JSON file (default: speedrun-gpu with CUDA, else speedrun-cpu)")
    args, rest = ap.parse_known_args(argv)
    args.config = args.config or default_config()
    print(f"speedrun: config {args.config}", flush=True)
    from .r1.pipeline import R1Config, run_r1
    from .report import render_report
    from .train.config import load_config, parse_overrides

    over = parse_overrides(rest)
    over["out_dir"] = args.out
    cfg = load_config(R1Config, "r1", args.config, over)
    run = Path(run_r1(cfg))
    md = render_report(run)
    summary(run, md)
    return 0


def default_config() -> str:
    import torch

    return "speedrun-gpu" if torch.cuda.is_available() else "speedrun-cpu"


def summary(run: Path, md: Path) -> None:
    rep = json.loads((run / "report.json").read_text())
    print("\n| stage | pass@1 | cons@k | format rate | train tokens | train s |\n|---|---|---|---|---|---|")
    for s in rep["stages"]:
        e = s.get("eval") or {}
        print(f"| {s['stage']} | {e.get('pass@1', float('nan')):.3f} | {e.get('cons@k', float('nan')):.3f} | "
              f"{e.get('format_rate', float('nan')):.3f} | {s.get('tokens') or '–'} | "
              f"{(s.get('train_seconds') or 0):.0f} |")
    print(f"\nreport: {md}\npipeline report: {run / 'report.md'}\nchat with the final model: nanoseek chat {run / '4_final_rl'}")

"""`nanoseek r1`: the DeepSeek-R1 multi-stage recipe (R1.md §1.3) as one resumable run.

  [base]  pretrained model (`init`), or pretrained here from a pretrain preset (`pretrain`)
  1 cold_start_sft   SFT on worked chain-of-thought conversations (R1 §2.3.1)
  2 reasoning_rl     GRPO with rule rewards (R1 §2.3.2)
  3 rejection_sft    sample K per prompt from stage 2, keep correct + well-formed, SFT on them
                     (R1 fine-tunes the *base* on them: `rs.init = "base"`; §2.3.3)
  4 final_rl         GRPO again from stage 3 (R1 §2.3.4, rule rewards only here)

Each stage evaluates the model it produced on the same held-out set (R1 protocol: k samples,
T 0.6, top-p 0.95). `stages.json` records finished stages (with the stage's resolved config): a
rerun reuses them and resumes an interrupted stage from its checkpoints. `stages` can be a subset
(e.g. `["reasoning_rl"]` = R1-Zero, `["cold_start_sft"]` = SFT only) for claim C10's comparison of
accuracy per device-hour. Outputs: report.json (structured, per stage) and report.md (its table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model.config import ConfigError
from ..train.checkpoint import list_checkpoints
from ..train.config import cli_overrides, deep_merge, from_dict, load_config

STAGES = ("cold_start_sft", "reasoning_rl", "rejection_sft", "final_rl")


@dataclass
class EvalSpec:
    n: int = 64  # held-out problems
    k: int = 4  # samples per problem
    max_new_tokens: int = 128
    batch_size: int = 64
    level: Any = None  # default: the pipeline's level
    seed: int = 0


@dataclass
class RejectionSpec:
    prompts: int = 64  # training prompts sampled (never eval problems)
    k: int = 8
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int | None = None  # default: eval.max_new_tokens
    max_per_prompt: int | None = None
    seed: int = 1
    init: str = "base"  # SFT starts from: "base" (R1) | "previous" (the RL model)
    mix_builtin: int = 0  # cold-start conversations mixed in (R1 mixes ~200k non-reasoning samples)
    sft: dict = field(default_factory=dict)  # SFTConfig fields for this SFT


@dataclass
class R1Config:
    name: str = "r1"
    out_dir: str = "runs/r1"
    init: str = ""  # pretrained run/model directory; empty = pretrain with `pretrain`
    pretrain: dict | None = None  # {"config": preset or file, "overrides": {...}}
    task: str = "arithmetic"  # built-in task or JSONL
    level: Any = 1
    prompt_format: str = "chat"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    device: str = "auto"
    gpu_price_per_hour: float = 2.0
    eval: EvalSpec = field(default_factory=EvalSpec)
    sft: dict = field(default_factory=dict)  # SFTConfig fields (cold start)
    grpo: dict = field(default_factory=dict)  # GRPOConfig fields (reasoning RL)
    rs: RejectionSpec = field(default_factory=RejectionSpec)
    grpo2: dict = field(default_factory=dict)  # merged over `grpo` for the final RL

    def __post_init__(self) -> None:
        for name, cls in (("eval", EvalSpec), ("rs", RejectionSpec)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, from_dict(cls, getattr(self, name), name))
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise ConfigError(f"stages: unknown {bad}; choose from {', '.join(STAGES)}")
        if not self.init and not self.pretrain:
            raise ConfigError("init: give a pretrained run/model directory (--init DIR) or a `pretrain` section")
        if self.rs.init not in ("base", "previous"):
            raise ConfigError("rs.init: must be base or previous")
        for st in STAGES:  # fail on a typo now, not after an hour of training
            self.stage_config(st, "x", "x")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def stage_config(self, stage: str, init: str, out_dir: str):
        """The resolved SFTConfig / GRPOConfig of a stage."""
        from .grpo import GRPOConfig
        from .sft import SFTConfig

        dev = {"train": {"device": self.device, "gpu_price_per_hour": self.gpu_price_per_hour}}
        io = {"init": str(init), "out_dir": str(out_dir)}
        if stage in ("cold_start_sft", "rejection_sft"):
            base = self.sft if stage == "cold_start_sft" else self.rs.sft
            d = deep_merge(deep_merge({"train": {"progress": False}}, base), {**io, **dev})
            return SFTConfig(**d)
        g = self.grpo if stage == "reasoning_rl" else deep_merge(self.grpo, self.grpo2)
        task = {"task": {"name": self.task, "level": self.level, "prompt_format": self.prompt_format}}
        return GRPOConfig(**deep_merge(deep_merge(task, g), {**io, **dev}))


# ----------------------------------------------------------------------------- bookkeeping


def _read(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _has_model(d: Path) -> bool:
    return (d / "model" / "config.json").exists()


def _cost(d: Path) -> dict:
    c = _read(d / "cost.json", {})
    return {k: c.get(k) for k in ("tokens", "tokens_generated", "train_seconds", "device_hours", "dollars")}


def _rl_summary(d: Path) -> dict:
    """Mean and last values of the headline RL metrics (R1.md §7: watch frac_reward_zero_std)."""
    recs = [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "reward" in r]
    if not recs:
        return {}
    keys = ("reward", "accuracy", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio", "kl")
    return {"steps": len(recs), **{f"{k}_first": recs[0].get(k) for k in keys[:3]},
            **{f"{k}_last": recs[-1].get(k) for k in keys},
            "frac_reward_zero_std_mean": sum(r["frac_reward_zero_std"] for r in recs) / len(recs)}


def evaluate_dir(cfg: R1Config, d: Path, examples: list[dict]) -> dict:
    from .evaluate import evaluate, load_model

    model, tok = load_model(d, cfg.device)
    t0 = time.time()
    res = evaluate(model, tok, examples, k=cfg.eval.k, max_new_tokens=cfg.eval.max_new_tokens,
                   batch_size=cfg.eval.batch_size, seed=cfg.eval.seed, prompt_format=cfg.prompt_format)
    res.pop("sampling", None)
    return {**res, "eval_seconds": time.time() - t0}


# ----------------------------------------------------------------------------- stages


def _base(cfg: R1Config, run: Path) -> tuple[Path, dict]:
    """The base model directory; pretrains into 0_base when no `init` is given."""
    if cfg.init:
        return Path(cfg.init), {}
    from ..train.config import PretrainConfig
    from ..train.pretrain import run_pretrain

    d = run / "0_base"
    if not _has_model(d):
        p = cfg.pretrain or {}
        over = deep_merge(p.get("overrides", {}), {"out_dir": str(d), "train": {"device": cfg.device}})
        pc = load_config(PretrainConfig, "pretrain", p.get("config", "tiny-cpu"), over)
        run_pretrain(pc, resume=bool(list_checkpoints(d)))
    return d, _cost(d)


def _run_sft_stage(cfg: R1Config, stage: str, init: Path, d: Path, data: str | None = None) -> dict:
    from .sft import run_sft

    sc = cfg.stage_config(stage, str(init), str(d))
    if data is not None:
        sc.data = data
    run_sft(sc, resume=bool(list_checkpoints(d)))
    return {}


def _run_rl_stage(cfg: R1Config, stage: str, init: Path, d: Path) -> dict:
    from .grpo import run_grpo

    run_grpo(cfg.stage_config(stage, str(init), str(d)), resume=bool(list_checkpoints(d)))
    return {"rl": _rl_summary(d)}


def _run_rejection_stage(cfg: R1Config, prev: Path, base: Path, d: Path) -> dict:
    """Sample from the previous stage, keep correct + well-formed, SFT on them (+ optional mix)."""
    from .data import builtin_conversations, write_jsonl
    from .evaluate import load_model, train_examples
    from .sample import rejection_sample

    rs, data = cfg.rs, d / "rs_data.jsonl"
    stats = _read(d / "rs_stats.json", None)
    t0 = time.time()
    if stats is None or not data.exists():
        model, tok = load_model(prev, cfg.device)
        examples = train_examples(cfg.task, rs.prompts, cfg.level, rs.seed)
        records, stats = rejection_sample(model, tok, examples, rs.k, rs.temperature, rs.top_p,
                                          rs.max_new_tokens or cfg.eval.max_new_tokens, cfg.eval.batch_size,
                                          rs.seed, cfg.prompt_format, rs.max_per_prompt)
        del model
        # the mix has the cold start's difficulty (digits, ops): anything else moves the model off the task
        b = cfg.stage_config("cold_start_sft", str(base), str(d)).builtin
        mix = [{"messages": m} for m in builtin_conversations(rs.mix_builtin, b.min_digits, b.max_digits, b.ops,
                                                              seed=rs.seed + 1)] if rs.mix_builtin else []
        if not records and not mix:
            raise ConfigError(f"rejection_sft: no correct, well-formed samples from {prev} "
                              f"({stats['samples']} samples); raise rs.k / rs.prompts or set rs.mix_builtin")
        write_jsonl(data, records + mix)
        stats = {**{k: v for k, v in stats.items() if k != "per_prompt_solve_rate"}, "mixed_builtin": len(mix),
                 "sampling_seconds": time.time() - t0}
        d.mkdir(parents=True, exist_ok=True)
        (d / "rs_stats.json").write_text(json.dumps(stats, indent=2))
    _run_sft_stage(cfg, "rejection_sft", base if rs.init == "base" else prev, d, str(data))
    return {"rejection": stats}


def _run_stage(cfg: R1Config, stage: str, prev: Path, base: Path, d: Path) -> dict:
    if stage == "cold_start_sft":
        return _run_sft_stage(cfg, stage, prev, d)
    if stage == "rejection_sft":
        return _run_rejection_stage(cfg, prev, base, d)
    return _run_rl_stage(cfg, stage, prev, d)


# ----------------------------------------------------------------------------- the run


def run_r1(cfg: R1Config) -> Path:
    """Run (or resume) the pipeline; returns the run directory with report.json / report.md."""
    from .rollout import eval_examples
    from .tasks import is_task_file

    run = Path(cfg.out_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    done: dict = _read(run / "stages.json", {})
    examples = eval_examples(cfg.task, cfg.eval.n, cfg.eval.level if cfg.eval.level is not None else cfg.level,
                             cfg.eval.seed)
    if is_task_file(cfg.task):
        print(f"[r1] warning: task {cfg.task} is a file: every stage is evaluated on its first {cfg.eval.n} rows, "
              "which SFT, rejection sampling and GRPO also draw from (not held out)")
    t0 = time.time()
    base, base_cost = _base(cfg, run)
    if "base" not in done:
        done["base"] = {"dir": str(base), "eval": evaluate_dir(cfg, base, examples), **base_cost}
        _save(run, done)
    prev = base
    for i, stage in enumerate(cfg.stages, 1):
        d = run / f"{i}_{stage}"
        scfg = cfg.stage_config(stage, str(prev), str(d)).to_dict()
        if stage == "rejection_sft":
            scfg = {"sft": scfg, "rs": dataclasses.asdict(cfg.rs)}
        rec = done.get(stage)
        if rec and _has_model(d):
            if rec.get("config") != json.loads(json.dumps(scfg)):
                raise ConfigError(f"{d}: stage {stage!r} finished with a different config; delete that "
                                  "directory to redo it, or use a new out_dir")
            print(f"[r1] {stage}: done, reusing {d}")
            prev = d
            continue
        print(f"[r1] stage {i}/{len(cfg.stages)}: {stage} <- {prev}")
        ts = time.time()
        extra = _run_stage(cfg, stage, prev, base, d)
        wall = time.time() - ts
        ev = evaluate_dir(cfg, d, examples)
        done[stage] = {"dir": str(d), "eval": ev, "wall_seconds": wall, **_cost(d), **extra, "config": scfg}
        _save(run, done)
        print(f"[r1] {stage}: pass@1 {ev['pass@1']:.3f}, cons@k {ev['cons@k']:.3f}, format {ev['format_rate']:.3f} "
              f"({wall:.0f}s)")
        prev = d
    write_report(cfg, run, done, time.time() - t0)
    print((run / "report.md").read_text())
    print(f"done: {run} (final model in {prev / 'model'})")
    return run


def _save(run: Path, done: dict) -> None:
    tmp = run / "stages.json.tmp"
    tmp.write_text(json.dumps(done, indent=2))
    tmp.replace(run / "stages.json")


def write_report(cfg: R1Config, run: Path, done: dict, wall: float) -> dict:
    """report.json (per stage: eval, tokens, seconds, device-hours, dollars) and report.md."""
    rows, hours = [], 0.0
    for name in ["base", *cfg.stages]:
        r = done.get(name)
        if r is None:
            continue
        hours += (r.get("device_hours") or 0.0) + (r.get("rejection", {}).get("sampling_seconds", 0.0) / 3600)
        keep = ("pass@1", "pass@k", "cons@k", "format_rate", "mean_len", "truncated_frac", "n", "k", "eval_seconds")
        rows.append({"stage": name, "dir": r["dir"], "eval": {k: r["eval"].get(k) for k in keep},
                     "tokens": r.get("tokens"), "tokens_generated": r.get("tokens_generated"),
                     "train_seconds": r.get("train_seconds"), "wall_seconds": r.get("wall_seconds"),
                     "device_hours": r.get("device_hours"), "dollars": r.get("dollars"),
                     "cumulative_device_hours": hours, **{k: r[k] for k in ("rl", "rejection") if k in r}})
    rep = {"name": cfg.name, "task": cfg.task, "level": cfg.level, "stages": rows,
           "total": {"device_hours": hours, "dollars": sum(r["dollars"] or 0.0 for r in rows),
                     "wall_seconds_this_invocation": wall},
           "eval_protocol": {"n": cfg.eval.n, "k": cfg.eval.k, "temperature": 0.6, "top_p": 0.95,
                             "max_new_tokens": cfg.eval.max_new_tokens}}
    (run / "report.json").write_text(json.dumps(rep, indent=2))
    (run / "report.md").write_text(_markdown(rep))
    return rep


def _markdown(rep: dict) -> str:
    e = rep["eval_protocol"]
    lines = [f"# R1 pipeline: {rep['name']} ({rep['task']}, level {rep['level']})", "",
             f"Held-out eval: {e['n']} problems × k={e['k']} samples, T 0.6, top-p 0.95, ≤{e['max_new_tokens']} tokens.", "",
             "| stage | pass@1 | cons@k | format | mean len | train tokens | train s | cum. device-h | $ | notes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["stages"]:
        ev, note = r["eval"], ""
        if "rl" in r and r["rl"]:
            rl = r["rl"]
            note = (f"reward {rl['reward_first']:.2f}→{rl['reward_last']:.2f}, "
                    f"zero-std groups {rl['frac_reward_zero_std_mean']:.2f}")
        if "rejection" in r:
            rj = r["rejection"]
            note = f"kept {rj['kept']}/{rj['samples']} samples (+{rj['mixed_builtin']} cold-start)"
        fmt = lambda v, s="{:.3f}": "–" if v is None else s.format(v)  # noqa: E731
        lines.append(f"| {r['stage']} | {fmt(ev['pass@1'])} | {fmt(ev['cons@k'])} | {fmt(ev['format_rate'])} | "
                     f"{fmt(ev['mean_len'], '{:.1f}')} | {fmt(r['tokens'], '{:,}')} | {fmt(r['train_seconds'], '{:.1f}')} | "
                     f"{r['cumulative_device_hours']:.4f} | {fmt(r['dollars'], '{:.4f}')} | {note} |")
    lines += ["", f"Total: {rep['total']['device_hours']:.4f} device-hours, ${rep['total']['dollars']:.4f}.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def main_r1(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek r1", description=(
        "The R1 pipeline: cold-start SFT -> reasoning GRPO -> rejection-sampling SFT -> final GRPO, "
        "evaluated after each stage; resumable (finished stages are reused). Overrides: --grpo.train.steps 20 "
        "--eval.n 100 --stages '[\"reasoning_rl\"]'"))
    ap.add_argument("--config", default="tiny-cpu", help="r1 preset (tiny-cpu, demo-cpu) or a JSON file")
    ap.add_argument("--init", default=None, help="pretrained run or model directory (skips the preset's pretraining)")
    ap.add_argument("--out", default=None, help="run directory")
    args, rest = ap.parse_known_args(argv)
    over = cli_overrides(rest, args.init, args.out)
    run_r1(load_config(R1Config, "r1", args.config, over))
    return 0

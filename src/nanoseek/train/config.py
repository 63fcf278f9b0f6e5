"""Typed trainer configs, loaded from JSON presets with dotted command-line overrides.

`nanoseek pretrain --config tiny-cpu --optim.lr 3e-4 --train.steps 50`: every key is checked
against the dataclasses, so a typo is an error that names the key.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data.config import DataConfig
from ..model.config import ConfigError, ModelConfig

PRESETS = Path(__file__).resolve().parent.parent / "presets"


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # V3 report §4.2
    weight_decay: float = 0.1  # not applied to norms, biases, embeddings' ... see optim.param_groups
    eps: float = 1e-8
    grad_clip: float = 1.0
    schedule: str = "cosine"  # "cosine" | "wsd" (warmup-stable-decay) | "constant"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final lr = lr × min_lr_ratio
    decay_frac: float = 0.2  # wsd: the last fraction of steps decays linearly
    moments_dtype: str = "float32"  # "float32" | "bfloat16" (V3 keeps AdamW moments in bf16)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (at the end of the ramp)
    batch_ramp_steps: int = 0  # linearly ramp micro-batches per step from batch_ramp_start to grad_accum
    batch_ramp_start: int = 1
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    precision: str = "auto"  # "auto" (bf16 autocast on GPU, fp32 on CPU) | "fp32" | "bf16" | "fp8"
    compile: bool = False
    ce_chunk: int = 0  # >0: chunked cross-entropy over this many tokens (never full logits)
    mtp_weight: float = 0.3  # λ
    balance_alpha: float = 1e-4  # α, sequence-wise balance loss
    bias_gamma: float = 1e-3  # γ, aux-loss-free bias update speed
    log_every: int = 1
    eval_every: int = 100
    eval_batches: int = 20
    ckpt_every: int = 200
    keep_last: int = 2
    tensorboard: bool = False
    gpu_price_per_hour: float = 2.0  # dollars, for the run's cost.json
    progress: bool = True


@dataclass
class PretrainConfig:
    name: str = "pretrain"
    out_dir: str = "runs/pretrain"
    model: str = "tiny"  # a model preset name, a nanoseek JSON or an HF config.json
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"num_hidden_layers": 2}
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # the torch.distributed layout under torchrun (dist.mesh.ParallelConfig keys: dp, ep, pp, pp_schedule,
    # microbatches, fsdp, ...); ignored by a single process. train.batch_size is then per data-parallel rank.
    parallel: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, cls in (("data", DataConfig), ("optim", OptimConfig), ("train", TrainConfig)):
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, DataConfig.from_dict(v) if cls is DataConfig else from_dict(cls, v, f"{name}"))
        self.validate()

    def validate(self) -> None:
        o, t = self.optim, self.train
        checks = [
            (o.lr > 0, "optim.lr", "must be > 0"),
            (o.schedule in ("cosine", "wsd", "constant"), "optim.schedule", "must be cosine, wsd or constant"),
            (len(o.betas) == 2, "optim.betas", "must have two values"),
            (o.moments_dtype in ("float32", "bfloat16"), "optim.moments_dtype", "must be float32 or bfloat16"),
            (t.steps > 0 and t.batch_size > 0 and t.grad_accum > 0, "train.steps", "steps, batch_size, grad_accum must be > 0"),
            (1 <= t.batch_ramp_start <= t.grad_accum, "train.batch_ramp_start", "must be in 1..grad_accum"),
            (t.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda"),
            (t.precision in ("auto", "fp32", "bf16", "fp8"), "train.precision", "must be auto, fp32, bf16 or fp8"),
            (t.keep_last >= 1, "train.keep_last", "must be >= 1"),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise ConfigError(f"{name}: {msg}")
        if self.parallel:
            self.parallel_config()

    def parallel_config(self):
        """`parallel` as a dist.mesh.ParallelConfig (unknown keys are a ConfigError naming them)."""
        from ..dist.mesh import ParallelConfig

        if not isinstance(self.parallel, dict):
            raise ConfigError(f"parallel: must be a mapping of ParallelConfig keys, got {self.parallel!r}")
        try:
            return ParallelConfig.from_dict(self.parallel)
        except TypeError as e:
            raise ConfigError(f"parallel: {e}") from e

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        cfg = ModelConfig.load(self.model)
        kw = dict(self.model_overrides)
        if vocab_size is not None:
            kw.setdefault("vocab_size", vocab_size)
        return cfg.replace(**kw) if kw else cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def from_dict(cls, d: dict[str, Any], where: str):
    known = {f.name for f in fields(cls)}
    bad = sorted(set(d) - known)
    if bad:
        raise ConfigError(f"unknown key {where}.{bad[0]}; known keys of {where}: {', '.join(sorted(known))}")
    return cls(**d)


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """['--optim.lr', '3e-4', '--train.steps=5'] -> {'optim': {'lr': 3e-4}, 'train': {'steps': 5}}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise ConfigError(f"unexpected argument {a!r} (overrides look like --section.key value)")
        key, _, val = a[2:].partition("=")
        if not _:
            if i + 1 >= len(argv):
                raise ConfigError(f"override --{key} has no value")
            val, i = argv[i + 1], i + 1
        node = out
        parts = key.replace("-", "_").split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(val)
        i += 1
    return out


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "model_overrides" else v
    return out


def load_config(cls, kind: str, config: str | None, overrides: dict[str, Any]):
    """A preset name (presets/<kind>/<name>.json) or a JSON path, merged with overrides."""
    base: dict[str, Any] = {}
    if config:
        p = Path(config)
        if not p.exists():
            p = PRESETS / kind / f"{config}.json"
        if not p.exists():
            avail = sorted(x.stem for x in (PRESETS / kind).glob("*.json"))
            raise ConfigError(f"config {config!r} not found (a path, or one of the {kind} presets: {', '.join(avail)})")
        try:
            base = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: invalid JSON ({e})") from e
    merged = deep_merge(base, overrides)
    known = {f.name for f in fields(cls)}
    bad = sorted(set(merged) - known)
    if bad:
        raise ConfigError(f"unknown key {bad[0]!r}; known top-level keys: {', '.join(sorted(known))}")
    return cls(**merged)


def cli_overrides(rest: list[str], init: str | None = None, out: str | None = None) -> dict[str, Any]:
    """Dotted overrides from the command line plus the usual --init / --out flags (when given)."""
    over = parse_overrides(rest)
    if init:
        over["init"] = init
    if out:
        over["out_dir"] = out
    return over

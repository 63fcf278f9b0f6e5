"""`nanoseek grpo`: Group Relative Policy Optimization on a pretrained or SFT'd policy (R1.md §1.1).

One step (design note: docs/r1_pipeline.md):
  1. draw P prompts; sample G completions each with the latent-cache sampler (temperature 1);
  2. score with the weighted rule rewards (`RewardSet`), group-normalise into advantages;
     dynamic sampling (DAPO) optionally drops groups whose G rewards are all equal and resamples;
  3. pi_old log-probs once without grad (only when mu > 1 or several minibatches make the later
     updates off-policy; else rho == 1 and the old log-prob is logp.detach()), pi_ref if beta > 0;
  4. mu epochs over minibatches of the clipped objective (`objective.grpo_loss`), grad
     accumulation over micro-batches that reproduces the minibatch's aggregation exactly.

Run directory: config.json, metrics.jsonl (TRL metric names), completions.jsonl, checkpoints/,
eval.json (before/after), model/ (+ tokenizer.json), tokenizer.json, cost.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.tokenizer import Tokenizer
from ..model import DeepSeekV3, update_router_bias
from ..model.config import ConfigError
from ..model.hf import CheckpointError, save_pretrained
from ..train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from ..train.config import OptimConfig, cli_overrides, from_dict, load_config
from ..train.metrics import MetricsLogger, fmt_duration
from ..train.optim import build_optimizer, lr_at
from .objective import filter_zero_std_groups, group_advantages, grpo_loss, mask_truncated
from .rewards import RewardSet, get_reward, reward_metrics
from .tasks import check_task, is_task_file
from .rollout import (Batch, ExampleSource, Samples, batched_logprobs, build_batch,
                      completion_logprobs, eval_examples, route_counter, sample_groups, score)


# ----------------------------------------------------------------------------- config


@dataclass
class TaskConfig:
    name: str = "arithmetic"  # built-in generator (arithmetic | countdown) or a .jsonl path
    level: Any = 1  # int or list of ints (mixed uniformly)
    seed: int = 0
    prompt_format: str = "chat"  # chat: <|User|>q<|Assistant|><think> | r1: R1-Zero template text
    eval_task: str | None = None  # held-out set (default: the same task's held-out split)
    eval_level: Any = None  # default: level


@dataclass
class RolloutConfig:
    prompts_per_step: int = 8  # P
    group_size: int = 8  # G
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    gen_batch_size: int = 0  # rows per generate() call; 0 = all P*G at once
    sampler_dtype: str = "auto"  # weights the sampler runs on: auto (bf16 copy on CUDA) | float32 | bfloat16


@dataclass
class LossConfig:
    scale: str = "group"  # advantages: group | batch | none (Dr. GRPO)
    agg: str = "dapo"  # grpo | dapo | dr_grpo (R1.md §2 table)
    eps_low: float = 0.2
    eps_high: float | None = None  # None = eps_low; 0.28 = DAPO clip-higher
    beta: float = 0.0  # k3 KL to the frozen reference; 0 loads no reference model
    mu: int = 1  # update epochs per batch of samples
    minibatch_size: int = 0  # completions per optimizer step; 0 = all
    micro_batch_size: int = 0  # completions per forward (grad accumulation); 0 = minibatch
    dynamic_sampling: bool = False  # DAPO: drop zero-std groups, resample to refill
    max_resample: int = 3  # extra sampling rounds per step to refill dropped groups
    mask_truncated: bool = True  # cut-off completions teach nothing (R1.md §6.2)
    router: str = "frozen"  # frozen | update: aux-loss-free bias from completion-token loads
    bias_gamma: float = 1e-3


@dataclass
class RLTrainConfig:
    steps: int = 100
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 1
    ckpt_every: int = 50
    keep_last: int = 2
    eval_n: int = 0  # held-out problems evaluated before and after (0 = no eval)
    eval_k: int = 4
    eval_every: int = 0  # extra evaluations every n steps (0 = only before/after)
    log_completions: int = 4  # completions per step written to completions.jsonl
    progress: bool = False
    gpu_price_per_hour: float = 2.0


def _rl_optim() -> OptimConfig:
    return OptimConfig(lr=1e-5, weight_decay=0.0, schedule="constant", warmup_steps=0)


@dataclass
class GRPOConfig:
    name: str = "grpo"
    out_dir: str = "runs/grpo"
    init: str = ""  # run directory (uses RUN/model) or model directory with tokenizer.json
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.1})
    reward_params: dict[str, dict] = field(default_factory=dict)  # name -> kwargs (get_reward)
    grpo: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=_rl_optim)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)

    SECTIONS = {"task": TaskConfig, "rollout": RolloutConfig, "grpo": LossConfig,
                "optim": OptimConfig, "train": RLTrainConfig}

    def __post_init__(self) -> None:
        for name, cls in self.SECTIONS.items():
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, from_dict(cls, v, name))
        self.validate()

    def validate(self) -> None:
        g, r = self.grpo, self.rollout
        checks = [
            (g.scale in ("group", "batch", "none"), "grpo.scale", "must be group, batch or none"),
            (g.agg in ("grpo", "dapo", "dr_grpo"), "grpo.agg", "must be grpo, dapo or dr_grpo"),
            (g.router in ("frozen", "update"), "grpo.router", "must be frozen or update"),
            (g.mu >= 1 and g.beta >= 0 and g.eps_low > 0, "grpo.mu", "mu >= 1, beta >= 0, eps_low > 0"),
            (r.prompts_per_step > 0 and r.group_size > 0 and r.max_new_tokens > 0,
             "rollout", "prompts_per_step, group_size, max_new_tokens must be > 0"),
            (self.task.prompt_format in ("chat", "r1"), "task.prompt_format", "must be chat or r1"),
            (r.sampler_dtype in ("auto", "float32", "bfloat16"), "rollout.sampler_dtype",
             "must be auto, float32 or bfloat16"),
            (self.train.steps >= 0, "train.steps", "must be >= 0"),
            (self.optim.lr > 0, "optim.lr", "must be > 0"),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise ConfigError(f"{name}: {msg}")
        for name in self.rewards:
            try:
                get_reward(name)  # an unknown reward fails at load time, naming the registry
            except ConfigError as e:
                raise ConfigError(f"rewards.{name}: {e}") from None
        for t in (self.task.name, self.task.eval_task):
            if t is not None:
                check_task(t)  # before any run directory is made

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- helpers


def resolve_model_dir(path: str | Path) -> Path:
    p = Path(path)
    if (p / "model" / "config.json").exists():
        p = p / "model"
    if not (p / "config.json").exists():
        raise CheckpointError(f"{path}: not a run directory (RUN/model) or a model directory")
    return p


def load_policy(path: str | Path, device: torch.device) -> tuple[DeepSeekV3, Tokenizer]:
    """fp32 weights (bf16 autocast on GPU): RL updates are tiny, bf16 weights would lose them."""
    p = resolve_model_dir(path)
    tok_dir = p if (p / "tokenizer.json").exists() else p.parent
    model = DeepSeekV3.from_pretrained(p, dtype=torch.float32, device=device)
    return model, Tokenizer.load(tok_dir)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build_reward_set(cfg: GRPOConfig) -> RewardSet:
    return RewardSet({get_reward(n, **cfg.reward_params.get(n, {})): w for n, w in cfg.rewards.items()})


def accuracy_key(per_func: dict) -> str | None:
    """The correctness reward among the configured ones (what `accuracy` reports)."""
    return next((k for k in ("accuracy", "countdown") if k in per_func), None)


def model_state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> int:
    """Bytes of parameters + buffers, and for a trained model (opt given) the gradients it
    allocates in every step plus the optimizer state (AdamW: two moments per parameter)."""
    n = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if opt is not None:
        n += sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        n += sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                 if torch.is_tensor(v))
    return n


def evaluate_policy(model, tok, examples: list[dict], k: int, max_new_tokens: int,
                    prompt_format: str = "chat", seed: int = 0, batch_size: int = 64) -> dict:
    """pass@1 / cons@k / format_rate with the R1 eval settings (T 0.6, top-p 0.95, k samples),
    rendering prompts exactly like the rollouts."""
    from .evaluate import evaluate

    return evaluate(model, tok, examples, k=k, temperature=0.6, top_p=0.95, max_new_tokens=max_new_tokens,
                    batch_size=batch_size, seed=seed, prompt_format=prompt_format)


# ----------------------------------------------------------------------------- trainer

UPDATE_KEYS = ("loss", "grad_norm", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
               "clip_ratio/region_mean")
PER_STEP = ("loss", "value_loss", "grad_norm")  # summed once per optimizer step; others per row


class GRPOTrainer:
    """Holds policy, optional frozen reference, optimizer, reward set and example source."""

    algo = "grpo"

    def __init__(self, cfg: GRPOConfig, model: DeepSeekV3 | None = None,
                 tok: Tokenizer | None = None) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.train.device)
        if model is None:
            model, tok = load_policy(cfg.init, self.device)
        self.model, self.tok = model.to(self.device), tok
        self.model.train()
        self.ref = self._load_ref() if cfg.grpo.beta > 0 else None
        self.opt = build_optimizer(self.model, cfg.optim, self.device)
        self.rewards = build_reward_set(cfg)
        self.source = ExampleSource(cfg.task.name, cfg.task.level, cfg.task.seed)
        self.step = self.tokens = self.gen_tokens = 0
        self.seconds = 0.0
        self._sampler: DeepSeekV3 | None = None

    def sampler(self) -> DeepSeekV3:
        """The model rollouts sample from: the policy itself, or a bf16 copy (default on CUDA)
        refreshed in place from the fp32 policy before each rollout, as RL systems sync weights into
        their inference engine. In place keeps every weight address, so the decode step's CUDA graph
        stays valid; sampling from fp32 weights under autocast would recast them every token."""
        want = self.cfg.rollout.sampler_dtype
        if want == "float32" or (want == "auto" and self.device.type != "cuda"):
            return self.model
        if self._sampler is None:
            self._sampler = copy.deepcopy(self.model).to(torch.bfloat16).eval().requires_grad_(False)
        else:
            with torch.no_grad():
                for dst, src in zip([*self._sampler.parameters(), *self._sampler.buffers()],
                                    [*self.model.parameters(), *self.model.buffers()]):
                    dst.copy_(src)
        return self._sampler

    def _load_ref(self) -> DeepSeekV3:
        """A frozen copy of the initial policy (bf16 on GPU: it only runs forwards)."""
        ref = copy.deepcopy(self.model)
        if self.device.type == "cuda":
            ref = ref.to(torch.bfloat16)
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref.eval()

    def held_models(self) -> list[tuple[torch.nn.Module, torch.optim.Optimizer | None]]:
        return [(self.model, self.opt)] + [(m, None) for m in (self.ref, self._sampler) if m is not None]

    def state_bytes(self) -> int:
        return sum(model_state_bytes(m, o) for m, o in self.held_models())

    # ---- 1-2: sample and score ------------------------------------------------------------
    def rollout(self) -> tuple[Samples, dict]:
        """P groups of G scored samples; with dynamic sampling only groups with reward spread,
        resampling up to max_resample extra rounds (DAPO). Returns (samples, stats)."""
        c, r, G = self.cfg, self.cfg.rollout, self.cfg.rollout.group_size
        kept: list[Samples] = []
        n_groups = zero = rounds = 0
        t0 = time.perf_counter()
        sampler = self.sampler()  # weight sync counts as generation time
        t_gen, t_score = time.perf_counter() - t0, 0.0
        first: Samples | None = None
        while rounds <= (c.grpo.max_resample if c.grpo.dynamic_sampling else 0):
            need = r.prompts_per_step - sum(len(s) for s in kept) // G
            if need <= 0:
                break
            t0 = time.perf_counter()
            seed = (c.train.seed * 1_000_003 + self.step * 1009 + rounds * 17) % 2**31
            s = sample_groups(sampler, self.tok, self.source.draw(r.prompts_per_step), G,
                              max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                              top_k=r.top_k, top_p=r.top_p, prompt_format=c.task.prompt_format,
                              seed=seed, gen_batch_size=r.gen_batch_size)
            _sync(self.device)
            t1 = time.perf_counter()
            score(s, self.rewards)
            t_score += time.perf_counter() - t1
            t_gen += t1 - t0
            self.gen_tokens += sum(len(x) for x in s.completion_ids)
            first = s if first is None else first
            keep, frac = filter_zero_std_groups(s.rewards, G)
            n_groups += len(s) // G
            zero += float(frac) * (len(s) // G)
            rounds += 1
            if not c.grpo.dynamic_sampling:
                kept.append(s)
                break
            if keep.any():
                kept.append(s.select(keep))
        out = Samples.cat(kept) if kept else first.select(torch.zeros(len(first), dtype=torch.bool))
        if len(out) > r.prompts_per_step * G:
            out = out.select(torch.arange(len(out)) < r.prompts_per_step * G)
        stats = {"frac_reward_zero_std": zero / max(n_groups, 1), "time/generate": t_gen,
                 "time/score": t_score, "sampling/rounds": rounds, "sampling/groups_kept": len(out) // G,
                 "_first": first}
        return out, stats

    # ---- 3-4: advantages and update ------------------------------------------------------
    def compute_advantages(self, s: Samples, b: Batch) -> torch.Tensor:
        """(N,) group-normalised outcome advantages (PPO overrides with per-token GAE)."""
        return group_advantages(s.rewards, self.cfg.rollout.group_size, self.cfg.grpo.scale).to(self.device)

    def _micro_extra(self, idx: torch.Tensor, sub: Batch, weight: float) -> dict:
        """Hook for extra losses on the same micro-batch (PPO: the critic's value loss)."""
        return {}

    def _after_opt_step(self) -> None:
        """Hook after the policy optimizer step (PPO: the critic's step)."""

    def update(self, s: Samples, b: Batch) -> dict:
        """mu epochs of minibatch optimizer steps on one batch of samples; returns metrics."""
        g, N = self.cfg.grpo, b.n
        mb = min(g.minibatch_size or N, N)
        micro = min(g.micro_batch_size or mb, mb)
        self.last_adv = self.compute_advantages(s, b)  # (N,) or (N, Tc)
        self.cur_mask = mask_truncated(b.mask, b.truncated) if g.mask_truncated else b.mask  # (N, Tc)
        off_policy = g.mu > 1 or mb < N
        old = batched_logprobs(self.model, b, micro) if off_policy else None
        ref = batched_logprobs(self.ref, b, micro) if self.ref is not None else None
        lr = lr_at(self.step, self.cfg.optim, max(self.cfg.train.steps, 1))
        for grp in self.opt.param_groups:
            grp["lr"] = lr
        gen = torch.Generator().manual_seed(self.cfg.train.seed + self.step)
        sums: dict[str, torch.Tensor] = {}
        n_opt = 0
        for epoch in range(g.mu):
            order = torch.randperm(N, generator=gen) if off_policy else torch.arange(N)
            for start in range(0, N, mb):
                idx = order[start:start + mb].to(self.device)
                n_opt += self._optimizer_step(b, idx, micro, old, ref, epoch == 0, sums)
        self.opt.zero_grad(set_to_none=True)
        out = {"lr": lr, "optimizer_steps": n_opt}
        for k, v in sums.items():  # entropy: already the token mean (epoch 0 only)
            den = 1 if k == "entropy" else n_opt if k in PER_STEP else g.mu * N
            out[k] = float(v) / max(den, 1)
        for k in UPDATE_KEYS:  # no optimizer step (all rows masked): keep the columns, as null
            out.setdefault(k, None)
        self.tokens += int(b.attention_mask.sum()) * g.mu
        return out

    def _optimizer_step(self, b: Batch, idx: torch.Tensor, micro: int, old, ref, log_entropy: bool,
                        sums: dict) -> int:
        """One optimizer step on rows idx, accumulated over micro-batches; returns 1 if taken.

        Weights make the accumulated gradient equal the minibatch's own aggregation: dapo divides
        every micro-batch by the minibatch's active-token count, grpo / dr_grpo average rows.
        """
        g, mask = self.cfg.grpo, self.cur_mask
        n_tok = mask[idx].sum()
        if float(n_tok) == 0:
            return 0  # every row masked (e.g. all truncated): nothing to learn from
        self.opt.zero_grad(set_to_none=True)
        counts = None
        for m0 in range(0, len(idx), micro):
            sub_idx = idx[m0:m0 + micro]
            sub, share = b[sub_idx], len(sub_idx) / len(idx)
            with route_counter(self.model, sub.input_mask) as got:
                logp, ent = completion_logprobs(self.model, sub, entropy=log_entropy)
            loss, met = grpo_loss(
                logp, None if old is None else old[sub_idx], None if ref is None else ref[sub_idx],
                self.last_adv[sub_idx], mask[sub_idx], eps_low=g.eps_low, eps_high=g.eps_high, beta=g.beta,
                agg=g.agg, max_len=self.cfg.rollout.max_new_tokens + 1,
                num_tokens=n_tok if g.agg == "dapo" else None)
            w = 1.0 if g.agg == "dapo" else share
            (loss * w).backward()
            counts = got() if counts is None else counts + got()
            met.pop("completions/truncated_frac", None)  # truncated rows are masked, logged elsewhere
            met.update(self._micro_extra(sub_idx, sub, share), loss=loss.detach() * w)
            if ent is not None:
                met["entropy"] = (ent * mask[sub_idx]).sum() / mask.sum().clamp(min=1)
            for k, v in met.items():  # PER_STEP and entropy are already weighted; the rest by rows
                sums[k] = sums.get(k, 0.0) + (v if k in PER_STEP or k == "entropy" else v * len(sub_idx))
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self._after_opt_step()
        if g.router == "update" and counts is not None:
            update_router_bias(self.model, counts, g.bias_gamma)
        return 1

    def train_step(self) -> tuple[dict, Samples | None, torch.Tensor | None]:
        t0 = time.perf_counter()
        s, st = self.rollout()
        rec: dict[str, Any] = {k: v for k, v in st.items() if not k.startswith("_")}
        rec.update(self._sample_metrics(st["_first"]))  # the policy as sampled, before filtering
        shown = s if len(s) else st["_first"]
        adv = None
        t1 = time.perf_counter()
        if len(s):
            b = build_batch(s, self.tok.eos_id, self.tok.pad_id or 0, self.device)
            rec.update(self.update(s, b))
            adv = self.last_adv if self.last_adv.dim() == 1 else self.last_adv[:, 0]
        _sync(self.device)
        rec["time/update"] = time.perf_counter() - t1
        rec["time/step"] = time.perf_counter() - t0
        return rec, shown, adv

    def _sample_metrics(self, s: Samples) -> dict:
        info = s.reward_info
        lens = torch.tensor([float(len(c)) for c in s.completion_ids])
        rec = {"reward": float(s.rewards.mean()), "reward_std": float(s.rewards.std()) if len(s) > 1 else 0.0,
               **reward_metrics(info),
               "completions/mean_length": float(lens.mean()), "completions/min_length": float(lens.min()),
               "completions/max_length": float(lens.max()),
               "completions/clipped_ratio": float(s.truncated.float().mean()),
               "tokens/generated": int(lens.sum())}
        key = accuracy_key(info["per_func"])
        rec["accuracy"] = rec[f"rewards/{key}/mean"] if key else rec["reward"]
        return rec

    # ---- checkpoints --------------------------------------------------------------------
    def save(self, run_dir: Path) -> Path:
        state = {"drawn": self.source.drawn, "tokens": self.tokens, "gen_tokens": self.gen_tokens,
                 "seconds": self.seconds, "config": self.cfg.to_dict(), "algo": self.algo}
        return save_checkpoint(run_dir, self.step, self.model, self.opt, state, self.cfg.train.keep_last)

    def resume(self, run_dir: Path) -> bool:
        cks = list_checkpoints(run_dir)
        if not cks:
            return False
        state = load_checkpoint(cks[-1], self.model, self.opt)
        self.step, self.tokens, self.gen_tokens = state["step"], state["tokens"], state["gen_tokens"]
        self.seconds = state["seconds"]
        self.source.skip_to(state["drawn"])
        return True


# ----------------------------------------------------------------------------- the run


def _eval(tr: GRPOTrainer, examples: list[dict], step: int) -> dict:
    if not examples:
        return {}
    c = tr.cfg
    res = evaluate_policy(tr.model, tr.tok, examples, c.train.eval_k, c.rollout.max_new_tokens,
                          c.task.prompt_format, seed=c.train.seed)
    tr.model.train()
    return {"step": step, **{f"eval/{k}": v for k, v in res.items()}}


def _line(rec: dict, total: int) -> str:
    rec = {**rec, "kl": rec.get("kl") or 0.0, "entropy": rec.get("entropy") or float("nan")}
    return (f"step {rec['step']:>{len(str(total))}d}/{total} | reward {rec['reward']:.3f} | "
            f"acc {rec['accuracy']:.3f} | len {rec['completions/mean_length']:.1f} | "
            f"clip {rec['completions/clipped_ratio']:.2f} | zero_std {rec['frac_reward_zero_std']:.2f} | "
            f"kl {rec['kl']:.4f} | ent {rec['entropy']:.3f} | "
            f"gen/score/upd {rec['time/generate']:.1f}/{rec['time/score']:.2f}/{rec['time/update']:.1f}s")


def _log_completions(path: Path, step: int, s: Samples, adv: torch.Tensor | None, n: int) -> None:
    if n <= 0 or s is None or not len(s):
        return
    with path.open("a") as f:
        for i in range(min(n, len(s))):
            f.write(json.dumps({
                "step": step, "prompt": s.prompts[i], "completion": s.completions[i],
                "answer": s.examples[i].get("answer"), "reward": float(s.rewards[i]),
                "rewards": {k: v[i] for k, v in s.reward_info["per_func"].items()},
                "advantage": None if adv is None or i >= len(adv) else float(adv[i]),
                "truncated": bool(s.truncated[i])}, ensure_ascii=False) + "\n")


def run_rl(cfg: GRPOConfig, trainer_cls=GRPOTrainer, resume: bool = False,
           trainer: GRPOTrainer | None = None) -> Path:
    """The training loop shared by GRPO and PPO: evaluate, train, checkpoint, save, cost."""
    run_dir = Path(cfg.out_dir)
    t_start = time.time()
    tr = trainer or trainer_cls(cfg)  # loads --init first: a bad model dir leaves no run dir behind
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    torch.manual_seed(cfg.train.seed)
    resumed = tr.resume(run_dir) if resume else False
    if not resumed and list_checkpoints(run_dir):
        raise CheckpointError(f"{run_dir} already has checkpoints; pass --resume or use a new out_dir")
    if not resumed:
        (run_dir / "completions.jsonl").unlink(missing_ok=True)
    log = MetricsLogger(run_dir, cfg.train.steps, tr.step, cfg.train.progress, append=resumed)
    ev_task = cfg.task.eval_task or cfg.task.name
    if cfg.train.eval_n and cfg.task.eval_task is None and is_task_file(cfg.task.name):
        log.print(f"warning: task {cfg.task.name} is a file and task.eval_task is not set: the before/after "
                  "eval uses its first rows, which the policy also trains on (not held out)")
    ev_level = cfg.task.eval_level if cfg.task.eval_level is not None else cfg.task.level
    examples = eval_examples(ev_task, cfg.train.eval_n, ev_level, 0) if cfg.train.eval_n else []
    evals = json.loads((run_dir / "eval.json").read_text()) if resumed and (run_dir / "eval.json").exists() else {}
    if examples and "before" not in evals:
        evals["before"] = _eval(tr, examples, tr.step)
        log.log(evals["before"], "  eval before | " + _fmt_eval(evals["before"]))
    n_params = tr.model.num_params()
    log.print(f"{tr.algo}: {n_params / 1e6:.2f}M params on {tr.device}; {cfg.train.steps} steps × "
              f"{cfg.rollout.prompts_per_step} prompts × G={cfg.rollout.group_size}, "
              f"≤{cfg.rollout.max_new_tokens} new tokens" + (f" (resumed at {tr.step})" if resumed else ""))
    while tr.step < cfg.train.steps:
        rec, shown, adv = tr.train_step()
        tr.step += 1
        tr.seconds += rec["time/step"]
        rec.update(step=tr.step, **{"tokens/total": tr.tokens, "tokens/generated_total": tr.gen_tokens,
                                    "perf/tokens_per_s": rec["tokens/generated"] / max(rec["time/step"], 1e-9)})
        eta = (cfg.train.steps - tr.step) * tr.seconds / max(tr.step, 1)
        log.log(rec, _line(rec, cfg.train.steps) + f" | eta {fmt_duration(eta)}"
                if tr.step % cfg.train.log_every == 0 else None)
        log.advance()
        _log_completions(run_dir / "completions.jsonl", tr.step, shown, adv, cfg.train.log_completions)
        if examples and cfg.train.eval_every and tr.step % cfg.train.eval_every == 0 and tr.step < cfg.train.steps:
            ev = _eval(tr, examples, tr.step)
            log.log(ev, "  eval | " + _fmt_eval(ev))
        if tr.step % cfg.train.ckpt_every == 0 or tr.step == cfg.train.steps:
            tr.save(run_dir)
    if examples:
        evals["after"] = _eval(tr, examples, tr.step)
        log.log(evals["after"], "  eval after | " + _fmt_eval(evals["after"]))
        (run_dir / "eval.json").write_text(json.dumps(evals, indent=2))
    log.close()
    final = save_pretrained(tr.model, run_dir / "model")
    tr.tok.save(final)
    tr.tok.save(run_dir)
    write_cost(run_dir, tr, time.time() - t_start)
    print(f"done: {run_dir} (final model in {final})")
    return run_dir


def _fmt_eval(ev: dict) -> str:
    return " | ".join(f"{k[5:]} {v:.3f}" for k, v in ev.items() if k.startswith("eval/") and isinstance(v, float))


def write_cost(run_dir: Path, tr: GRPOTrainer, wall: float) -> None:
    cuda = tr.device.type == "cuda"
    price = tr.cfg.train.gpu_price_per_hour if cuda else 0.0
    rec = {"stage": tr.algo, "device": torch.cuda.get_device_name() if cuda else "cpu",
           "tokens": tr.tokens, "tokens_generated": tr.gen_tokens, "train_seconds": tr.seconds,
           "wall_seconds": wall, "device_hours": tr.seconds / 3600, "price_per_hour": price,
           "dollars": tr.seconds / 3600 * price, "steps": tr.step}
    (run_dir / "cost.json").write_text(json.dumps(rec, indent=2))


def run_grpo(cfg: GRPOConfig, resume: bool = False) -> Path:
    """Train with GRPO from `cfg.init`; returns the run directory (model/ inside)."""
    return run_rl(cfg, GRPOTrainer, resume)


# ----------------------------------------------------------------------------- CLI


def rl_cli(argv: list[str], kind: str, cfg_cls, runner) -> int:
    ap = argparse.ArgumentParser(prog=f"nanoseek {kind}", description=(
        f"{kind.upper()} on a verifiable task. Any config key can be overridden: --grpo.beta 0.04 "
        "--rollout.group_size 8 --train.steps 50 --task.name countdown --rewards '{\"accuracy\": 1}'"))
    ap.add_argument("--config", default="tiny-cpu", help=f"preset name ({kind} presets) or a JSON file")
    ap.add_argument("--init", default=None, help="run directory or model directory to start from")
    ap.add_argument("--out", default=None, help="run directory")
    ap.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    args, rest = ap.parse_known_args(argv)
    over = cli_overrides(rest, args.init, args.out)
    cfg = load_config(cfg_cls, "grpo", args.config, over)
    if not cfg.init:
        raise ConfigError("init: give --init RUN_OR_MODEL_DIR (a pretraining or SFT run)")
    runner(cfg, resume=args.resume)
    return 0


def main_grpo(argv: list[str]) -> int:
    return rl_cli(argv, "grpo", GRPOConfig, run_grpo)


__all__ = ["GRPOConfig", "GRPOTrainer", "run_grpo", "run_rl", "main_grpo", "evaluate_policy",
           "load_policy", "model_state_bytes"]

"""`nanoseek distill`: teach a small dense student from a reasoning teacher (R1 §2.4, §4.1).

(a) Sequence level, what R1 did: the teacher samples reasoning traces on task prompts, only
    correct and well-formed ones are kept (`sample.rejection_sample`), and the student is trained
    by plain SFT on them. Works across tokenizers: traces are text.
(b) Logit level (Hinton KD; TRL GKD's beta=0 / beta=1 ends): at every assistant position the
    student matches the teacher's next-token distribution, softened by temperature T:
        forward KL(p_T || p_S) = sum_v p_T (log p_T - log p_S)   mean-seeking, covers all modes
        reverse KL(p_S || p_T) = sum_v p_S (log p_S - log p_T)   mode-seeking (on-policy KD)
    times T^2 (keeps gradient scale independent of T), averaged over target tokens, plus an
    optional CE term. Needs one shared vocabulary.

Teacher: a nanoseek run/model dir or any local `transformers` causal LM dir with tokenizer.json.
Student: a nanoseek preset/JSON (made dense: every layer a plain FFN, no routed experts; its
vocabulary is the teacher's) or an HF dir (config only = random init).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.packing import IGNORE_INDEX
from ..data.sources import DataError
from ..data.tokenizer import Tokenizer
from ..model import DeepSeekV3, ModelConfig, model_loss
from ..model.config import ConfigError
from ..train.config import TrainConfig
from ..train.trainer import pick_device
from .data import load_conversations, write_jsonl
from .evaluate import is_hf, load_model, quiet_hf, train_examples
from .sample import rejection_sample, summary
from .sft import SFTConfig, forward_logits, train_sft

KD_KINDS = ("none", "forward", "reverse")


# ----------------------------------------------------------------------------- KD loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
            kind: str = "forward", temperature: float = 1.0) -> torch.Tensor:
    """Mean over `mask`ed positions of KL between softened distributions, times T^2.

    logits (..., V) each; mask (...) bool (None = all). kind: "forward" = KL(teacher || student),
    "reverse" = KL(student || teacher). Computed in fp32 from log-softmaxes (no log(0)).
    """
    vs, vt = student_logits.shape[-1], teacher_logits.shape[-1]
    if vs != vt:
        raise ValueError(f"logit-level KD needs one vocabulary: student has {vs} logits, teacher has {vt}")
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "forward":
        kl = (t.exp() * (t - s)).sum(-1)
    elif kind == "reverse":
        kl = (s.exp() * (s - t)).sum(-1)
    else:
        raise ValueError(f"kd kind must be forward or reverse, got {kind!r}")
    m = torch.ones_like(kl) if mask is None else mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1) * temperature ** 2


def check_vocab(student, teacher) -> None:
    vs, vt = student.config.vocab_size, teacher.config.vocab_size
    if vs != vt:
        raise ConfigError(f"logit-level KD needs one vocabulary: student vocab_size {vs}, teacher vocab_size {vt} "
                          "(use --kd none for sequence-level distillation)")


def make_kd_loss(teacher, kind: str = "forward", temperature: float = 1.0, kd_weight: float = 1.0,
                 ce_weight: float = 1.0):
    """A `Trainer` loss: ce_weight * CE (+ MTP/balance for nanoseek students) + kd_weight * KD."""
    teacher.eval().requires_grad_(False)

    def loss_fn(model, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
        stats: dict[str, Any] = {}
        if is_hf(model):
            logits = forward_logits(model, batch)
            ce = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
            main, lm = ce, ce.detach()
        else:
            out = model(batch["input_ids"], position_ids=batch.get("position_ids"), doc_ids=batch.get("doc_ids"),
                        mtp=cfg.mtp_weight > 0)
            parts = model_loss(model, out, batch["labels"], cfg.mtp_weight, cfg.balance_alpha, cfg.ce_chunk)
            logits, main, lm = out.logits, parts.total, parts.lm
            stats["router_counts"] = out.router_counts
        with torch.no_grad():
            t_logits = forward_logits(teacher, batch)
        kd = kd_loss(logits, t_logits, batch["labels"] != IGNORE_INDEX, kind, temperature)
        return ce_weight * main + kd_weight * kd, {**stats, "lm": lm, "kd": kd.detach()}

    return loss_fn


# ----------------------------------------------------------------------------- students


def dense_student_config(spec: str, vocab_size: int, overrides: dict | None = None) -> ModelConfig:
    """A nanoseek preset/JSON made dense (R1 distills into dense Qwen/Llama): no routed experts,
    every layer (and MTP block) a plain FFN; the teacher's vocabulary so logits line up."""
    cfg = ModelConfig.load(spec)
    kw = {"vocab_size": vocab_size, **(overrides or {})}
    cfg = cfg.replace(**kw)
    return cfg.replace(n_routed_experts=0, first_k_dense_replace=cfg.num_hidden_layers)


def build_student(spec: str, teacher_tok: Tokenizer, vocab_size: int, overrides: dict | None = None,
                  seed: int = 0):
    """(student, tokenizer) in fp32: an HF / nanoseek model dir (weights if present, else a random
    init from its config.json; its own tokenizer.json if present), else a dense nanoseek config."""
    torch.manual_seed(seed)
    p = Path(spec)
    if (p / "config.json").exists():
        hf_cfg = json.loads((p / "config.json").read_text())
        tok = Tokenizer.load(p) if (p / "tokenizer.json").exists() else teacher_tok
        has_weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
        if hf_cfg.get("model_type", "deepseek_v3") == "deepseek_v3":
            model = DeepSeekV3.from_pretrained(p, dtype=torch.float32) if has_weights else DeepSeekV3(ModelConfig.from_hf(hf_cfg))
        else:
            from transformers import AutoConfig, AutoModelForCausalLM

            with quiet_hf():
                model = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32) if has_weights
                         else AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(p)).float())
        if tok.vocab_size > model.config.vocab_size:
            raise ConfigError(f"{p}: tokenizer has {tok.vocab_size} tokens but the student's vocab_size is {model.config.vocab_size}")
        return model.train(), tok
    return DeepSeekV3(dense_student_config(spec, vocab_size, overrides)).train(), teacher_tok


# ----------------------------------------------------------------------------- the stage


@dataclass
class DistillConfig:
    teacher: str = ""  # run / model dir (nanoseek or any HF causal LM)
    student: str = "tiny"  # nanoseek preset or JSON (made dense), or an HF model dir
    student_overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields, nanoseek students
    data: str | list[str] | None = None  # ready traces (conversation JSONL): skip teacher sampling
    task: str = "arithmetic"  # prompts for the teacher: arithmetic | countdown | FILE.jsonl
    n_prompts: int = 200
    level: int | list[int] = 1
    k: int = 4  # teacher samples per prompt
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 256
    gen_batch_size: int = 64
    prompt_format: str = "chat"
    kd: str = "none"  # none (sequence-level only) | forward | reverse (logit-level)
    kd_temperature: float = 1.0
    kd_weight: float = 1.0
    ce_weight: float = 1.0
    sft: SFTConfig = field(default_factory=SFTConfig)

    def __post_init__(self) -> None:
        if isinstance(self.sft, dict):
            self.sft = SFTConfig(**self.sft)
        if self.kd not in KD_KINDS:
            raise ConfigError(f"kd: must be one of {', '.join(KD_KINDS)}, got {self.kd!r}")
        if self.kd_temperature <= 0 or self.k < 1:
            raise ConfigError("kd_temperature must be > 0 and k >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def teacher_traces(cfg: DistillConfig, teacher, tok: Tokenizer, run_dir: Path, resume: bool) -> list:
    """Conversations to train on: given traces, the ones a resumed run already sampled, or fresh
    rejection-sampled teacher outputs (written to RUN/traces.jsonl + .stats.json)."""
    if cfg.data:
        return load_conversations(cfg.data)
    path = run_dir / "traces.jsonl"
    if resume and path.exists():
        return load_conversations(path)
    examples = train_examples(cfg.task, cfg.n_prompts, cfg.level, cfg.sft.train.seed)
    records, stats = rejection_sample(teacher, tok, examples, cfg.k, cfg.temperature, cfg.top_p, cfg.max_new_tokens,
                                      cfg.gen_batch_size, cfg.sft.train.seed, cfg.prompt_format)
    print(f"teacher traces: {summary(stats)}")
    write_jsonl(path, records)
    (run_dir / "traces.stats.json").write_text(json.dumps(stats, indent=2))
    if not records:
        raise DataError(f"the teacher produced no correct, well-formed trace on {len(examples)} {cfg.task} prompts "
                        f"x {cfg.k} samples; use a stronger teacher, an easier --level, more --k, or --data traces.jsonl")
    return load_conversations(path)


def run_distill(cfg: DistillConfig, resume: bool = False, teacher=None, teacher_tok: Tokenizer | None = None) -> Path:
    """Teacher traces -> (dense) student trained by SFT, optionally with logit KD. Returns the run
    dir (model/ holds the student). `teacher`/`teacher_tok` may be passed in-process."""
    if teacher is None:
        if not cfg.teacher:
            raise ConfigError("distill needs a teacher (--teacher RUN_OR_MODEL_DIR)")
        teacher, teacher_tok = load_model(cfg.teacher, cfg.sft.train.device)
    run_dir = Path(cfg.sft.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    convs = teacher_traces(cfg, teacher, teacher_tok, run_dir, resume)
    student, tok = build_student(cfg.student, teacher_tok, teacher.config.vocab_size, cfg.student_overrides,
                                 cfg.sft.train.seed)
    loss_fn = None
    if cfg.kd != "none":
        check_vocab(student, teacher)
        if tok.hf.get_vocab() != teacher_tok.hf.get_vocab():
            raise ConfigError("logit-level KD needs the teacher's tokenizer: the student's tokenizer.json differs")
        if is_hf(teacher):
            cfg.sft.pack = False  # an HF teacher takes a padding mask, not packed doc_ids
        teacher.to(pick_device(cfg.sft.train.device))
        loss_fn = make_kd_loss(teacher, cfg.kd, cfg.kd_temperature, cfg.kd_weight, cfg.ce_weight)
    else:
        teacher = None  # sequence-level: the teacher's work is done, free it
    n = sum(p.numel() for p in student.parameters())
    print(f"student: {type(student).__name__} {n / 1e6:.2f}M params; kd={cfg.kd}")
    return train_sft(student, tok, convs, cfg.sft, resume, loss_fn, stage="distill", config_dict=cfg.to_dict())


def main_distill(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek distill", description="Distil a teacher into a small dense student: "
                                 "teacher traces (rejection-sampled) + SFT, optionally logit KD. Training keys of the "
                                 "SFT config can be overridden: --train.steps 100 --optim.lr 1e-3")
    ap.add_argument("--teacher", required=True, help="run or model directory (nanoseek or any HF causal LM)")
    ap.add_argument("--student-config", default="tiny", help="nanoseek preset / JSON (made dense), or an HF model dir")
    ap.add_argument("--student-overrides", default="{}", help='JSON of ModelConfig fields, e.g. \'{"num_hidden_layers": 2}\'')
    ap.add_argument("--out", required=True, help="run directory")
    ap.add_argument("--config", default="distill-tiny", help="SFT preset or JSON for the student's training")
    ap.add_argument("--data", action="append", default=None, help="ready traces (conversation JSONL): skip sampling")
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--n", type=int, default=200, help="teacher prompts")
    ap.add_argument("--level", default="1")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--gen-batch-size", type=int, default=64)
    ap.add_argument("--kd", default="none", choices=KD_KINDS, help="logit-level KD divergence")
    ap.add_argument("--kd-temperature", type=float, default=1.0)
    ap.add_argument("--kd-weight", type=float, default=1.0)
    ap.add_argument("--ce-weight", type=float, default=1.0)
    ap.add_argument("--resume", action="store_true")
    a, rest = ap.parse_known_args(argv)
    from ..train.config import load_config, parse_overrides
    from .evaluate import _levels

    sft = load_config(SFTConfig, "sft", a.config, {**parse_overrides(rest), "out_dir": a.out})
    try:
        overrides = json.loads(a.student_overrides)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--student-overrides: invalid JSON ({e})") from e
    cfg = DistillConfig(teacher=a.teacher, student=a.student_config, student_overrides=overrides, data=a.data,
                        task=a.task, n_prompts=a.n, level=_levels(a.level), k=a.k, temperature=a.temperature,
                        top_p=a.top_p, max_new_tokens=a.max_new_tokens, gen_batch_size=a.gen_batch_size, kd=a.kd,
                        kd_temperature=a.kd_temperature, kd_weight=a.kd_weight, ce_weight=a.ce_weight, sft=sft)
    run_distill(cfg, resume=a.resume)
    return 0

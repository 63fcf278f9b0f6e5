"""`nanoseek sft`: supervised fine-tuning on conversations, loss on assistant tokens only
(R1 §2.3.1 cold start, §2.3.3 the 800k-sample SFT, §2.4 distillation = plain SFT).

Run directory (like pretraining): config.json, data.json (conversation/token counts),
metrics.jsonl, checkpoints/, model/ (+ tokenizer.json), cost.json (stage "sft").

The shared `Trainer` runs the loop; nanoseek models keep MTP / balance loss / router-bias updates
on packed rows, `transformers` models (distillation students) train on padded rows with their
own checkpoint format (`SFTTrainer`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.packing import IGNORE_INDEX
from ..data.tokenizer import Tokenizer
from ..model.config import ConfigError
from ..model.hf import CheckpointError, replace_dir
from ..train.checkpoint import list_checkpoints, rng_state, set_rng_state
from ..train.config import OptimConfig, TrainConfig, from_dict
from ..train.trainer import LossFn, Trainer, autocast_ctx, default_loss, pick_device
from .data import SFTBatcher, builtin_conversations, encode_all, load_conversations
from .evaluate import is_hf, load_model, quiet_hf


@dataclass
class BuiltinSFTData:
    """Cold-start arithmetic conversations used when no --data is given (`data.builtin_conversations`)."""

    n: int = 1000
    min_digits: int = 1
    max_digits: int = 2
    ops: list[str] = field(default_factory=lambda: ["+", "-", "*"])
    seed: int = 0


# Fine-tuning defaults: a lower lr and a short warmup (the pretraining defaults are 3e-4 / 100).
_SFT_DEFAULTS = {"optim": lambda: OptimConfig(lr=1e-4, warmup_steps=20),
                 "train": lambda: TrainConfig(steps=200, eval_every=50, ckpt_every=100)}


@dataclass
class SFTConfig:
    name: str = "sft"
    init: str = ""  # run or model directory to fine-tune (nanoseek or HF causal LM + tokenizer.json)
    data: str | list[str] | None = None  # conversation JSONL file(s); None = built-in arithmetic
    out_dir: str = "runs/sft"
    seq_len: int = 512  # longer conversations are cut
    pack: bool = True  # several conversations per row (nanoseek models; HF models always pad)
    val_fraction: float = 0.05  # held-out conversations for val/loss
    builtin: BuiltinSFTData = field(default_factory=BuiltinSFTData)
    optim: OptimConfig = field(default_factory=lambda: _SFT_DEFAULTS["optim"]())
    train: TrainConfig = field(default_factory=lambda: _SFT_DEFAULTS["train"]())

    def __post_init__(self) -> None:
        for name, cls in (("builtin", BuiltinSFTData), ("optim", OptimConfig), ("train", TrainConfig)):
            v = getattr(self, name)
            if isinstance(v, dict):  # a partial dict overrides the SFT defaults, not the pretraining ones
                from_dict(cls, v, name)  # unknown keys fail naming the section
                base = dataclasses.asdict(_SFT_DEFAULTS.get(name, cls)())
                setattr(self, name, cls(**{**base, **v}))
        checks = [(self.seq_len > 8, "seq_len", "must be > 8"),
                  (0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)"),
                  (1 <= self.builtin.min_digits <= self.builtin.max_digits, "builtin.min_digits", "must be in 1..max_digits"),
                  (set(self.builtin.ops) <= {"+", "-", "*"} and self.builtin.ops, "builtin.ops", "must be a non-empty subset of + - *"),
                  (self.optim.lr > 0, "optim.lr", "must be > 0"),
                  (self.train.steps > 0 and self.train.batch_size > 0, "train.steps", "steps and batch_size must be > 0")]
        for ok, name, msg in checks:
            if not ok:
                raise ConfigError(f"{name}: {msg}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- losses


def forward_logits(model, batch: dict) -> torch.Tensor:
    """(B, S, V) logits of a nanoseek model (packed: doc_ids) or an HF model (padding mask)."""
    if is_hf(model):
        return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     position_ids=batch.get("position_ids")).logits
    return model(batch["input_ids"], position_ids=batch.get("position_ids"), doc_ids=batch.get("doc_ids")).logits


def hf_loss(model, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """Assistant-token CE for a `transformers` model (no MTP / balance terms)."""
    logits = forward_logits(model, batch)
    lm = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
    return lm, {"lm": lm.detach()}


@torch.no_grad()
def lm_loss(model, batch: dict, chunk: int = 0) -> tuple[float, int]:
    """(summed CE, target count) over a batch, for validation."""
    n = int((batch["labels"] != IGNORE_INDEX).sum())
    if is_hf(model):
        logits = forward_logits(model, batch).float()
        return float(F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum")), n
    from ..model.loss import cross_entropy

    out = model(batch["input_ids"], position_ids=batch["position_ids"], doc_ids=batch["doc_ids"], compute_logits=False)
    return float(cross_entropy(model, out.hidden, batch["labels"], chunk)) * n, n


def make_val_fn(docs, cfg: SFTConfig, pack: bool, pad_id: int, device: torch.device):
    """val/loss: assistant-token CE on the held-out conversations (first `eval_batches` batches)."""
    if not docs:
        return None

    def evaluate(model) -> dict:
        model.eval()
        total = count = 0
        loader = SFTBatcher(docs, cfg.seq_len, cfg.train.batch_size, pack=pack, pad_id=pad_id, shuffle=False, wrap=False)
        for i, batch in enumerate(loader):
            if i >= cfg.train.eval_batches:
                break
            with autocast_ctx(device, cfg.train.precision):
                s, n = lm_loss(model, {k: v.to(device) for k, v in batch.items()}, cfg.train.ce_chunk)
            total, count = total + s, count + n
        return {"val/loss": total / max(count, 1)}

    return evaluate


# ----------------------------------------------------------------------------- trainer


class SFTTrainer(Trainer):
    """`Trainer` plus: extra loss parts (e.g. `kd`) in the step record, and checkpoints of
    `transformers` models (their own save_pretrained; the nanoseek adapter needs a ModelConfig)."""

    def _step_record(self, r: dict, dt: float) -> dict:
        m = super()._step_record(r, dt)
        m.update({f"train/{k}_loss": r[k] for k in ("kd", "ce") if k in r})
        return m

    def save(self) -> Path:
        if not is_hf(self.model):
            return super().save()
        root = self.run_dir / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-step-", dir=root))
        data = self.train_iter.state_dict() if hasattr(self.train_iter, "state_dict") else {}
        with quiet_hf():
            self.model.save_pretrained(tmp / "model")
        torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                 "data": data, "config": self.config_dict}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        (tmp / "COMPLETE").write_text("ok\n")
        final = root / f"step_{self.step:06d}"
        replace_dir(tmp, final)
        for old in list_checkpoints(self.run_dir)[:-self.cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def maybe_resume(self) -> bool:
        if not is_hf(self.model):
            return super().maybe_resume()
        cks = list_checkpoints(self.run_dir)
        if not cks:
            return False
        ck = cks[-1]
        if not (ck / "COMPLETE").exists():
            raise CheckpointError(f"{ck}: incomplete checkpoint")
        with quiet_hf():
            saved = type(self.model).from_pretrained(ck / "model", dtype=next(self.model.parameters()).dtype)
        self.model.load_state_dict(saved.state_dict())
        self.opt.load_state_dict(torch.load(ck / "optimizer.pt", map_location="cpu", weights_only=False))
        set_rng_state(torch.load(ck / "rng.pt", weights_only=False))
        state = json.loads((ck / "state.json").read_text())
        self.step, self.tokens_seen, self.train_seconds = state["step"], state["tokens_seen"], state["train_seconds"]
        if hasattr(self.train_iter, "load_state_dict"):
            self.train_iter.load_state_dict(state["data"])
        return True


# ----------------------------------------------------------------------------- the stage


def split_val(convs: list, frac: float, seed: int) -> tuple[list, list]:
    """(train, val): a seeded shuffle, the first ceil-ish frac held out (none if frac == 0)."""
    idx = list(range(len(convs)))
    random.Random(f"val|{seed}").shuffle(idx)
    n_val = int(len(convs) * frac) if len(convs) * frac >= 1 else 0
    return [convs[i] for i in idx[n_val:]], [convs[i] for i in idx[:n_val]]


def save_model(model, tok: Tokenizer, path: Path) -> Path:
    """model/ directory: HF layout (nanoseek adapter, or transformers' own) + tokenizer.json."""
    if is_hf(model):
        with quiet_hf():
            model.save_pretrained(path)
    else:
        from ..model.hf import save_pretrained

        save_pretrained(model, path)
    tok.save(path)
    return path


def train_sft(model, tok: Tokenizer, convs: list, cfg: SFTConfig, resume: bool = False,
              loss_fn: LossFn | None = None, stage: str = "sft", config_dict: dict | None = None) -> Path:
    """Fine-tune `model` on conversations `convs` into cfg.out_dir; returns the run directory.
    `loss_fn` replaces the CE loss (distillation passes a KD loss); `stage` names cost.json."""
    t0 = time.time()
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_dict = config_dict or cfg.to_dict()
    (run_dir / "config.json").write_text(json.dumps(config_dict, indent=2))
    hf = is_hf(model)
    pack = cfg.pack and not hf
    train_c, val_c = split_val(convs, cfg.val_fraction, cfg.train.seed)
    docs, cut = encode_all(train_c, tok, cfg.seq_len)
    val_docs, _ = encode_all(val_c, tok, cfg.seq_len)
    pad_id = tok.pad_id if tok.pad_id is not None else 0
    loader = SFTBatcher(docs, cfg.seq_len, cfg.train.batch_size, cfg.train.seed, pack, pad_id)
    stats = {"conversations": len(convs), "train": len(docs), "val": len(val_docs), "truncated": cut,
             "train_tokens": int(sum(len(d[0]) for d in docs)),
             "assistant_targets": int(sum((d[1] != IGNORE_INDEX).sum() for d in docs)), "packed": pack}
    (run_dir / "data.json").write_text(json.dumps(stats, indent=2))
    print(f"sft data: {stats['train']} train / {stats['val']} val conversations, {stats['train_tokens']:,} tokens "
          f"({stats['assistant_targets']:,} assistant targets), {cut} cut at seq_len {cfg.seq_len}, "
          f"{'packed' if pack else 'padded'} rows")
    torch.manual_seed(cfg.train.seed)
    device = pick_device(cfg.train.device)
    trainer = SFTTrainer(model, cfg.optim, cfg.train, run_dir, loader,
                         make_val_fn(val_docs, cfg, pack, pad_id, device),
                         loss_fn=loss_fn or (hf_loss if hf else default_loss), config_dict=config_dict)
    last = trainer.fit(resume=resume)
    final = save_model(trainer.model, tok, run_dir / "model")
    from ..train.pretrain import write_cost

    write_cost(run_dir, trainer, device, time.time() - t0, last)
    cost = json.loads((run_dir / "cost.json").read_text())
    (run_dir / "cost.json").write_text(json.dumps({**cost, "stage": stage}, indent=2))
    print(f"done: {run_dir} (final model in {final}; {100 * loader.useful_fraction:.0f}% of positions carried loss)")
    return run_dir


def sft_conversations(cfg: SFTConfig) -> list:
    """The configured data: JSONL file(s), or the built-in arithmetic cold-start set."""
    if cfg.data:
        return load_conversations(cfg.data)
    b = cfg.builtin
    return builtin_conversations(b.n, b.min_digits, b.max_digits, b.ops, b.seed)


def run_sft(cfg: SFTConfig, resume: bool = False) -> Path:
    """Load `cfg.init` (fp32 master weights), train on `sft_conversations(cfg)`, return run dir."""
    if not cfg.init:
        raise ConfigError("sft needs init: a pretrained run or model directory (--init DIR)")
    convs = sft_conversations(cfg)  # before the model: bad data fails fast
    model, tok = load_model(cfg.init, device="cpu", dtype=torch.float32)
    return train_sft(model.train(), tok, convs, cfg, resume)


def _default_preset() -> str:
    return "small-gpu" if torch.cuda.is_available() else "tiny-cpu"


def main_sft(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek sft", description="Supervised fine-tuning on conversations "
                                 "(loss on assistant tokens only). Any config key can be overridden: "
                                 "--optim.lr 1e-4 --train.steps 100 --builtin.max_digits 3")
    ap.add_argument("--config", default=None, help="SFT preset (tiny-cpu, small-gpu) or a JSON file")
    ap.add_argument("--data", action="append", default=None, help="conversation JSONL (repeatable); default: built-in arithmetic")
    ap.add_argument("--init", default=None, help="run or model directory to start from")
    ap.add_argument("--out", default=None, help="run directory")
    ap.add_argument("--resume", action="store_true")
    args, rest = ap.parse_known_args(argv)
    from ..train.config import load_config, parse_overrides

    over = parse_overrides(rest)
    for key, val in (("data", args.data), ("init", args.init), ("out_dir", args.out)):
        if val:
            over[key] = val
    run_sft(load_config(SFTConfig, "sft", args.config or _default_preset(), over), resume=args.resume)
    return 0

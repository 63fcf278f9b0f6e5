"""Shared pieces for the matched experiments: the arithmetic data, a tiny config, a training loop.

Every arm of an experiment gets the same seed, the same batches in the same order and the same
optimizer, so the only difference is the switch being ablated.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.corpus import arithmetic_document
from ..data.packing import PackedDataset, eval_batches
from ..data.tokenizer import Tokenizer, train_tokenizer
from ..model import DeepSeekV3, ModelConfig, load_imbalance, model_loss, update_router_bias


@functools.lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    """A 512-token BPE trained on arithmetic chats (0.1 s); shared by every experiment."""
    rng = random.Random(1234)
    return train_tokenizer([arithmetic_document(rng, rng.randint(1, 5), rng.choice("+-*")) for _ in range(400)],
                           vocab_size=512)


def arithmetic_docs(n: int, seed: int, digits: tuple[int, int] = (1, 4)) -> tuple[list[np.ndarray], list[int]]:
    """n tokenized arithmetic chats of mixed difficulty -> (token arrays, operand digits)."""
    rng, tok = random.Random(seed), tokenizer()
    docs, diff = [], []
    for _ in range(n):
        d = rng.randint(*digits)
        docs.append(np.asarray(tok.encode(arithmetic_document(rng, d, rng.choice("+-*"))), dtype=np.int64))
        diff.append(d)
    return docs, diff


def tiny_config(**over) -> ModelConfig:
    """The `tiny` preset cut to 2 layers over the arithmetic vocabulary (~0.15 s/step at 8x128 on 1 core)."""
    base = dict(vocab_size=tokenizer().vocab_size, num_hidden_layers=2, max_position_embeddings=4096)
    return ModelConfig.preset("tiny").replace(**{**base, **over})


def build(cfg: ModelConfig, seed: int) -> DeepSeekV3:
    torch.manual_seed(seed)
    return DeepSeekV3(cfg)


@dataclass
class Arm:
    """The switches of one training arm."""

    mtp_weight: float = 0.0
    balance_alpha: float = 0.0
    bias_gamma: float = 0.0  # aux-loss-free router-bias step (0 = off)
    lr: float = 3e-3
    bf16: bool = False  # bf16 autocast (the report's baseline precision; slow but exact on CPU)


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # main LM loss per step
    imbalance: list[float] = field(default_factory=list)  # mean over MoE layers of max/mean load, per step
    step_s: float = 0.0  # median seconds per step (the first step excluded: warm-up)
    tokens: int = 0

    def tail(self, n: int = 5) -> float:
        """Mean of the last n values: one step's loss is too noisy at batch 8."""
        return float(np.mean(self.losses[-n:]))


def train(model: DeepSeekV3, batches, steps: int, arm: Arm, on_step=None) -> TrainResult:
    """AdamW for `steps` steps on packed batches; the trainer's objective, hand-rolled for speed."""
    opt = torch.optim.AdamW(model.parameters(), lr=arm.lr, weight_decay=0.0)
    res, times = TrainResult(), []
    model.train()
    for step in range(steps):
        b = next(batches)
        t = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=arm.bf16):
            out = model(b["input_ids"], position_ids=b["position_ids"], doc_ids=b["doc_ids"],
                        compute_logits=False, mtp=arm.mtp_weight > 0)
            parts = model_loss(model, out, b["labels"], arm.mtp_weight, arm.balance_alpha)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if out.router_counts is not None:
            if arm.bias_gamma > 0:
                update_router_bias(model, out.router_counts, arm.bias_gamma)
            ran = out.router_counts[out.router_counts.sum(-1) > 0]
            res.imbalance.append(float(load_imbalance(ran).mean()))
        times.append(time.perf_counter() - t)
        res.losses.append(float(parts.lm))
        res.tokens += int((b["labels"] != -100).sum())
        if on_step is not None:
            on_step(step, res)
    res.step_s = float(np.median(times[1:] if len(times) > 1 else times))
    return res


@torch.no_grad()
def eval_loss(model: DeepSeekV3, docs, seq_len: int, batch: int = 8) -> float:
    """Token-weighted main-LM loss over one packed pass of `docs`."""
    model.eval()
    tot = n = 0.0
    for b in eval_batches(docs, seq_len, batch, pad_id=tokenizer().pad_id or 0):
        out = model(b["input_ids"], position_ids=b["position_ids"], doc_ids=b["doc_ids"], compute_logits=False)
        k = int((b["labels"] != -100).sum())
        tot += float(model_loss(model, out, b["labels"]).lm) * k
        n += k
    model.train()
    return tot / max(n, 1)


def packed(docs, seq_len: int, batch: int, seed: int, **kw) -> PackedDataset:
    return PackedDataset(docs, seq_len, batch, seed=seed, pad_id=tokenizer().pad_id or 0, **kw)


def rel(a: float, b: float) -> float:
    """Relative difference (a - b) / b."""
    return (a - b) / b if b else float("nan")

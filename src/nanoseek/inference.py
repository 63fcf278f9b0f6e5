"""Load a model + tokenizer for sampling from a run directory or an HF model directory."""

from __future__ import annotations

from pathlib import Path

import torch

from .data import Tokenizer
from .model import DeepSeekV3
from .model.hf import CheckpointError


def load_for_inference(path: str | Path, device: str = "auto") -> tuple[DeepSeekV3, Tokenizer]:
    p = Path(path)
    if (p / "model" / "config.json").exists():
        p = p / "model"
    if not (p / "tokenizer.json").exists():
        raise CheckpointError(f"{p}: no tokenizer.json beside the model")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    model = DeepSeekV3.from_pretrained(p, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32, device=dev).eval()
    tok = Tokenizer.load(p)
    if tok.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{p}: tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {model.config.vocab_size}")
    return model, tok

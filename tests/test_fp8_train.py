"""A tiny DeepSeek-V3 trained with emulated FP8 linears tracks the full-precision loss."""

import functools

import torch

from nanoseek.fp8 import convert_to_fp8, default_filter
from nanoseek.model import DeepSeekV3, ModelConfig, model_loss
from nanoseek.model.loss import IGNORE


def train(fp8: bool, steps: int = 25):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").replace(vocab_size=256, hidden_size=128, moe_intermediate_size=128,
                                             intermediate_size=256, q_lora_rank=128, kv_lora_rank=128)
    m = DeepSeekV3(cfg)
    converted = convert_to_fp8(m, functools.partial(default_filter, min_features=128)) if fp8 else []
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    # a learnable stream: repeated random "words"
    words = torch.randint(3, 256, (32, 6), generator=g)
    losses = []
    for _ in range(steps):
        ids = words[torch.randint(0, 32, (8, 11), generator=g)].view(8, -1)[:, :64]
        labels = torch.roll(ids, -1, 1)
        labels[:, -1] = IGNORE
        loss = model_loss(m, m(ids, compute_logits=False, mtp=True), labels, 0.3, 1e-4).total
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, converted


def test_fp8_training_tracks_fp32():
    ref, _ = train(False)
    got, converted = train(True)
    assert any("kv_b_proj" in n for n in converted) and not any(n.endswith("mlp.gate") for n in converted)
    assert ref[-1] < 0.75 * ref[0]  # it learns
    rel = abs(sum(got[-5:]) - sum(ref[-5:])) / sum(ref[-5:])
    assert rel < 0.05, (ref[-5:], got[-5:])

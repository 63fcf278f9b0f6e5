"""GPU paths of the model against the CPU reference paths (skipped without CUDA)."""

import pytest
import torch

from nanoseek.model import DeepSeekV3, ModelConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _model(dtype):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").replace(hidden_size=256, moe_intermediate_size=128, n_routed_experts=16, num_experts_per_tok=4)
    return DeepSeekV3(cfg).to("cuda", dtype)


def test_cuda_fast_paths_match_reference_bf16():
    m = _model(torch.bfloat16)
    ids = torch.randint(0, 2048, (2, 128), device="cuda")
    doc = (torch.arange(128, device="cuda") >= 50).long()[None].repeat(2, 1)
    res = []
    for impl in (("sdpa", "grouped"), ("eager", "loop")):
        m.set_impl(*impl)
        m.zero_grad()
        out = m(ids, doc_ids=doc)
        out.logits.float().pow(2).mean().backward()
        res.append((out.logits.float(), m.lm_head.weight.grad.float().clone(), m.moe_layers()[0].experts.gate_up_proj.grad.float().clone()))
    for a, b in zip(*res):
        assert ((a - b).norm() / b.norm()).item() < 2e-2


def test_cuda_generate_matches_full_forward_fp32():
    m = _model(torch.float32).eval()
    prompts = [[5, 6, 7, 8], [9, 10]]
    got = m.generate(prompts, max_new_tokens=8)
    for p, g in zip(prompts, got):
        ids = list(p)
        for _ in range(8):
            with torch.no_grad():
                ids.append(int(m(torch.tensor([ids], device="cuda")).logits[0, -1].argmax()))
        assert g == ids[len(p):]

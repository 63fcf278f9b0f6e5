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
    """Per component: whole-model bf16 logits can legitimately differ when near-tied top-k
    routing choices flip (ARCHITECTURE.md §10.9), so experts and attention are compared alone."""
    from nanoseek.model.attention import attention_ref, attention_sdpa, document_causal_mask
    from nanoseek.model.moe import experts_grouped, experts_loop

    torch.manual_seed(0)
    T, E, K, d, I = 512, 16, 4, 256, 128
    x = torch.randn(T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    idx = torch.rand(T, E, device="cuda").topk(K, -1).indices
    w = torch.rand(T, K, device="cuda")
    w13 = (torch.randn(E, 2 * I, d, device="cuda") / d ** 0.5).bfloat16().requires_grad_()
    w2 = (torch.randn(E, d, I, device="cuda") / I ** 0.5).bfloat16().requires_grad_()
    res = []
    for fn in (experts_grouped, experts_loop):
        y, _ = fn(x, idx, w, w13, w2)
        gx, g13 = torch.autograd.grad(y.float().pow(2).sum(), (x, w13))
        res.append((y.float(), gx.float(), g13.float()))
    for a, b in zip(*res):
        assert ((a - b).norm() / b.norm()).item() < 1e-2
    q, k = (torch.randn(2, 4, 128, 192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(2, 4, 128, 128, device="cuda", dtype=torch.bfloat16)
    doc = (torch.arange(128, device="cuda") >= 50).long()[None].repeat(2, 1)
    for mask in (None, document_causal_mask(doc)):
        a, b = attention_sdpa(q, k, v, mask, 0.1).float(), attention_ref(q, k, v, mask, 0.1).float()
        assert ((a - b).norm() / b.norm()).item() < 1e-2


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

"""Core model: config validation, fast vs reference paths, gradients, losses, router-bias update."""

import dataclasses

import pytest
import torch

from nanoseek.model import ConfigError, DeepSeekV3, ModelConfig, model_loss, update_router_bias
from nanoseek.model.attention import document_causal_mask
from nanoseek.model.loss import IGNORE, cross_entropy, mtp_labels
from nanoseek.model.moe import RouterOutput, experts_grouped, experts_loop, sequence_balance_loss


def tiny(**kw) -> ModelConfig:
    return ModelConfig.preset("tiny").replace(**kw)


# ---------------------------------------------------------------------------- config
def test_presets_load_and_sizes():
    for name in ("tiny", "small", "16b", "671b"):
        ModelConfig.preset(name)
    with torch.device("meta"):
        small = DeepSeekV3(ModelConfig.preset("small").replace(num_nextn_predict_layers=0))
        v3 = DeepSeekV3(ModelConfig.preset("671b").replace(num_nextn_predict_layers=0))
    assert 1.0e9 <= small.num_params() <= 2.0e9
    assert 150e6 <= small.num_params(active=True) - small.model.embed_tokens.weight.numel() <= 300e6
    cfg = small.config
    for f in ("hidden_size", "intermediate_size", "moe_intermediate_size", "kv_lora_rank", "q_lora_rank"):
        assert getattr(cfg, f) % 128 == 0, f
    assert abs(v3.num_params() / 1e9 - 671.0) < 1.0  # ARCHITECTURE.md §1: main model 671.0B
    assert abs(v3.num_params(active=True) / 1e9 - 37.5) < 1.5  # ~37B activated


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="hidden_sise"):
        ModelConfig.from_dict({"hidden_sise": 8})
    with pytest.raises(ConfigError, match="n_group"):
        tiny(n_group=3)
    with pytest.raises(ConfigError, match="topk_group"):
        tiny(n_group=2, topk_group=3)
    with pytest.raises(ConfigError, match="hidden_size"):
        tiny(hidden_size="128")
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        tiny(num_experts_per_tok=9)
    with pytest.raises(ConfigError, match="preset"):
        ModelConfig.preset("nope")
    with pytest.raises(ConfigError, match="bogus_field"):
        ModelConfig.from_hf({**ModelConfig.preset("tiny").to_hf(), "bogus_field": 1})


def test_hf_config_round_trip_and_transformers_accepts_it():
    from transformers import DeepseekV3Config

    for name in ("tiny", "16b", "671b"):
        cfg = ModelConfig.preset(name)
        assert ModelConfig.from_hf(cfg.to_hf()) == cfg
        hf = DeepseekV3Config(**cfg.to_hf())
        assert ModelConfig.from_hf(hf.to_dict()).softmax_scale == pytest.approx(cfg.softmax_scale)
    assert ModelConfig.preset("671b").softmax_scale == pytest.approx(0.135234, abs=1e-6)


# ---------------------------------------------------------------------------- MoE paths
def _router(T, E, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    return idx, torch.rand(T, K, generator=g)


def test_grouped_experts_match_loop_forward_backward():
    T, E, K, d, I = 37, 8, 3, 16, 12
    idx, w = _router(T, E, K)
    idx[:, 0] = 2  # a hot expert; some experts may get no token at all
    x = torch.randn(T, d, dtype=torch.float64)
    w13 = torch.randn(E, 2 * I, d, dtype=torch.float64)
    w2 = torch.randn(E, d, I, dtype=torch.float64)
    grads = []
    for fn in (experts_grouped, experts_loop):
        ps = [t.clone().float().requires_grad_() for t in (x, w13, w2)]
        wg = w.clone().requires_grad_()
        y, counts = fn(ps[0], idx, wg, ps[1], ps[2])
        (y * torch.linspace(-1, 1, d)).sum().backward()
        grads.append((y.detach(), counts, [p.grad for p in ps] + [wg.grad]))
    (ya, ca, ga), (yb, cb, gb) = grads
    assert torch.equal(ca, cb) and ca.sum() == T * K
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_model_fast_and_reference_paths_agree_with_doc_mask():
    torch.manual_seed(0)
    m = DeepSeekV3(tiny())
    ids = torch.randint(0, 2048, (2, 24))
    doc = torch.tensor([[0] * 10 + [1] * 14, [0] * 24])
    pos = torch.cat([torch.arange(10), torch.arange(14)])[None].repeat(2, 1)
    pos[1] = torch.arange(24)
    outs = []
    for impl in (("sdpa", "grouped"), ("eager", "loop")):
        m.set_impl(*impl)
        m.zero_grad()
        o = m(ids, position_ids=pos, doc_ids=doc)
        o.logits.float().pow(2).mean().backward()
        outs.append((o.logits.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_document_mask_blocks_cross_document_gradients():
    torch.manual_seed(0)
    m = DeepSeekV3(tiny(num_nextn_predict_layers=0))
    ids = torch.randint(0, 2048, (1, 20))
    doc = torch.tensor([[0] * 8 + [1] * 12])
    pos = torch.cat([torch.arange(8), torch.arange(12)])[None]
    emb = m.model.embed_tokens(ids).detach().requires_grad_()
    # feed embeddings directly: grad of document 1's outputs w.r.t. document 0's inputs must be 0
    cos, sin = m.model.rotary(pos)
    h = emb
    for layer in m.model.layers:
        h = layer(h, cos, sin, document_causal_mask(doc))
    h[:, 8:].sum().backward()
    assert emb.grad[:, :8].abs().max() == 0
    assert emb.grad[:, 8:].abs().max() > 0
    # and a packed document gives the same outputs as the document alone
    with torch.no_grad():
        packed = m(ids, position_ids=pos, doc_ids=doc).logits[:, 8:]
        alone = m(ids[:, 8:]).logits
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    m = DeepSeekV3(tiny()).train()
    ids = torch.randint(0, 2048, (4, 32))
    labels = torch.roll(ids, -1, 1)
    labels[:, -1] = IGNORE
    out = m(ids, compute_logits=False, mtp=True)
    loss = model_loss(m, out, labels, mtp_weight=0.3, balance_alpha=1e-2)
    loss.total.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert loss.mtp is not None and loss.balance is not None


def test_chunked_cross_entropy_matches_full():
    torch.manual_seed(0)
    m = DeepSeekV3(tiny(num_nextn_predict_layers=0))
    h = torch.randn(3, 10, 128, requires_grad=True)
    y = torch.randint(0, 2048, (3, 10))
    y[0, :4] = IGNORE
    a = cross_entropy(m, h, y)
    ga = torch.autograd.grad(a, h)[0]
    b = cross_entropy(m, h, y, chunk=7)
    gb = torch.autograd.grad(b, h)[0]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)


def test_mtp_labels_never_cross_documents():
    labels = torch.tensor([[11, 12, IGNORE, 21, 22, 23, IGNORE]])  # doc A = tokens 0..2, doc B = 3..6
    assert mtp_labels(labels, 1).tolist() == [[12, IGNORE, IGNORE, 22, 23, IGNORE]]
    assert mtp_labels(labels, 2).tolist() == [[IGNORE, IGNORE, IGNORE, 23, IGNORE]]


# ---------------------------------------------------------------------------- balancing
def test_sequence_balance_loss_hand_computed():
    cfg = tiny(n_routed_experts=4, num_experts_per_tok=1, n_group=1, topk_group=1)
    # one sequence of T=2 tokens, both routed to expert 0
    scores = torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.1, 0.3, 0.3, 0.3]])
    r = RouterOutput(weights=torch.ones(2, 1), indices=torch.tensor([[0], [0]]), scores=scores)
    # f = [4/(1*2)*2, 0, 0, 0] = [4,0,0,0]; P_0 = mean(0.4, 0.1) = 0.25 -> L = 1.0
    assert sequence_balance_loss(r, 1, cfg).item() == pytest.approx(1.0)


def test_bias_update_moves_load_towards_balance():
    torch.manual_seed(0)
    cfg = tiny(num_nextn_predict_layers=0, n_group=1, topk_group=1)
    m = DeepSeekV3(cfg).eval()
    for moe in m.moe_layers():  # make expert 3 overloaded: its gate row aligns with every token
        moe.gate.weight.data[3] += 0.5
    ids = torch.randint(0, 2048, (4, 64))
    from nanoseek.model import load_imbalance

    with torch.no_grad():
        counts0 = m(ids).router_counts
        b_before = m.moe_layers()[0].gate.e_score_correction_bias.clone()
        update_router_bias(m, counts0, gamma=1e-3)
        b_after = m.moe_layers()[0].gate.e_score_correction_bias
        hot = counts0[0].argmax()
        assert b_after[hot] < b_before[hot]  # the overloaded expert's bias goes down
        imb0 = load_imbalance(counts0).mean().item()
        for _ in range(300):
            update_router_bias(m, m(ids).router_counts, gamma=2e-3)
        imb1 = load_imbalance(m(ids).router_counts).mean().item()
    assert imb1 < imb0 * 0.8, (imb0, imb1)


def test_bias_selects_but_never_weights():
    cfg = tiny(num_nextn_predict_layers=0, n_group=1, topk_group=1)
    m = DeepSeekV3(cfg)
    gate = m.moe_layers()[0].gate
    u = torch.randn(5, cfg.hidden_size)
    r0 = gate(u)
    gate.e_score_correction_bias[:] = torch.tensor([10.0, 10.0] + [0.0] * 6)
    r1 = gate(u)
    assert (r1.indices.sort(-1).values == torch.tensor([0, 1])).all()
    s = torch.sigmoid(u @ gate.weight.T).gather(1, r1.indices)  # unbiased scores of the chosen pair
    torch.testing.assert_close(r1.weights, s / s.sum(-1, keepdim=True) * cfg.routed_scaling_factor)
    assert not torch.equal(r0.indices, r1.indices)


def test_bf16_cast_keeps_router_bias_and_rope_in_fp32():
    m = DeepSeekV3(tiny()).to(torch.bfloat16)
    assert m.moe_layers()[0].gate.e_score_correction_bias.dtype == torch.float32
    assert m.model.rotary.inv_freq.dtype == torch.float32
    assert m.lm_head.weight.dtype == torch.bfloat16

"""CPU tests of fine-grained FP8: quantization bounds, DeepSeek scale format, emulated GEMMs.

Error model: E4M3 keeps 3 mantissa bits, so round-to-nearest of a normal value v (in scaled
units, |v| <= 448) errs by at most half a spacing = 2^-4 |v|; below the smallest normal 2^-6
the spacing is 2^-9, so the error is <= 2^-10. In real units: |x^ - x| <= 2^-4 |x| + 2^-10 s.
"""
import copy

import pytest
import torch
import torch.nn as nn

from nanoseek.fp8 import (FP8, FP8Linear, FP8LinearFn, convert_to_fp8, default_filter,
                          dequantize_act, dequantize_weight, fp8_grouped_mm,
                          quantize_act_1x128, quantize_act_t, quantize_weight_128x128)
from nanoseek.fp8.quant import dequant_blocks, pow2_ceil, quant_blocks


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def heavy_tailed(m, k, seed=0):
    torch.manual_seed(seed)
    x = torch.distributions.StudentT(3.0).sample((m, k))  # fat tails
    out = torch.rand(m, k) < 1e-3  # + rare ~1e4x outliers ("massive activations")
    return torch.where(out, x.sign() * 1e4 * (1 + x.abs()), x), out


def _bound_ok(x, dq, s_full):
    return bool(((dq - x).abs() <= 2**-4 * x.abs() + 2**-10 * s_full + 1e-12).all())


@pytest.mark.parametrize("kind", ["normal", "heavy"])
@pytest.mark.parametrize("pow2", [False, True])
def test_act_quant_error_bound(kind, pow2):
    torch.manual_seed(0)
    x = torch.randn(64, 512) * 3 if kind == "normal" else heavy_tailed(64, 512)[0]
    q, s = quantize_act_1x128(x, pow2)
    assert q.dtype == FP8 and q.shape == x.shape and s.shape == (64, 4) and s.dtype == torch.float32
    dq = dequantize_act(q, s)
    assert _bound_ok(x, dq, s.repeat_interleave(128, 1))
    amax = x.view(64, 4, 128).abs().amax(-1)
    if pow2:  # smallest power of two >= amax/448: still no overflow, at most 2x coarser
        assert torch.equal(s, torch.exp2(torch.log2(s).round()))
        assert (s >= amax / 448).all() and (s < 2 * amax / 448).all()
    else:
        assert torch.equal(s, amax.clamp_min(1e-4) / 448)
        assert torch.equal(q.float().abs().view(64, 4, 128).amax(-1), torch.full((64, 4), 448.0))


@pytest.mark.parametrize("kind", ["normal", "heavy"])
def test_weight_quant_error_bound(kind):
    w = torch.randn(384, 256) * 0.02 if kind == "normal" else heavy_tailed(384, 256, seed=1)[0]
    q, s = quantize_weight_128x128(w)
    assert s.shape == (3, 2)
    full = s.repeat_interleave(128, 0).repeat_interleave(128, 1)
    assert _bound_ok(w, dequantize_weight(q, s, torch.float32), full)


def test_tiles_beat_per_tensor_on_outliers():
    """One outlier sets the scale of its whole tensor: the bulk falls into E4M3's subnormals
    (or to zero). With 1x128 tiles only the outlier's own tile pays (V3 §3.3.2)."""
    x, outlier = heavy_tailed(256, 1024, seed=2)
    dq_tile = dequantize_act(*quantize_act_1x128(x))
    dq_tensor = dequant_blocks(*quant_blocks(x, None, None), None, None)  # one scale
    bulk = ~outlier
    e_tile, e_tensor = rel(dq_tile[bulk], x[bulk]), rel(dq_tensor[bulk], x[bulk])
    assert e_tile < 0.03 and e_tensor > 3 * e_tile, (e_tile, e_tensor)  # measured 0.023 / 0.146
    zeroed = lambda dq: ((dq[bulk] == 0) & (x[bulk] != 0)).float().mean().item()
    # measured 31% vs 0.4% (12% of tiles hold an outlier and lose their small values too)
    assert zeroed(dq_tensor) > 0.2 and zeroed(dq_tile) < 0.01


def test_deepseek_weight_format_edge_blocks():
    """576x200 weight: scale grid ceil(576/128) x ceil(200/128) = 5x2, partial edge blocks
    zero-padded for the amax, dequant W[blk] = fp8[blk].float() * scale_inv[bi, bj]."""
    torch.manual_seed(0)
    w = torch.randn(576, 200)
    w[512:, 128:] *= 1e-3  # the 64x72 corner block gets its own small scale
    q, s = quantize_weight_128x128(w)
    assert q.shape == (576, 200) and s.shape == (5, 2) and s.is_contiguous()
    for bi in range(5):
        for bj in range(2):
            blk = (slice(bi * 128, (bi + 1) * 128), slice(bj * 128, (bj + 1) * 128))
            assert s[bi, bj] == w[blk].abs().max().clamp_min(1e-4) / 448
            assert torch.equal(dequantize_weight(q, s, torch.float32)[blk], q[blk].float() * s[bi, bj])
    # DeepSeek's weight_dequant indexing: y[m, n] = w[m, n] * s[m // 128, n // 128]
    ref = q.float() * s.repeat_interleave(128, 0)[:576].repeat_interleave(128, 1)[:, :200]
    assert torch.equal(dequantize_weight(q, s, torch.float32), ref)
    assert dequantize_weight(q, s).dtype == torch.bfloat16
    assert rel(dequantize_weight(q, s, torch.float32), w) < 0.04


def test_transposed_variants_and_zero_tiles():
    torch.manual_seed(0)
    x = torch.randn(200, 256)  # 200 tokens: last 128x1 tile is partial
    qt, st = quantize_act_t(x)
    q2, s2 = quantize_act_1x128(x.t().contiguous())
    assert qt.shape == (256, 200) and st.shape == (256, 2)
    assert torch.equal(qt.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(st, s2)
    w = torch.randn(384, 256)
    wq, ws = quantize_weight_128x128(w)
    wtq, wts = quantize_weight_128x128(w, transpose=True)
    assert torch.equal(wtq.view(torch.uint8), wq.t().contiguous().view(torch.uint8))
    assert torch.equal(wts, ws.t())
    q, s = quantize_act_1x128(torch.zeros(2, 128))  # all-zero tile: finite clamped scale
    assert torch.equal(s, torch.full((2, 1), 1e-4) / 448) and (q.float() == 0).all()
    assert torch.equal(pow2_ceil(torch.tensor([1.0, 1.0000001, 0.75, 2**-20])),
                       torch.tensor([1.0, 2.0, 1.0, 2**-20]))


def _linear_ref(x, w, dy):
    x, w = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y = x @ w.t()
    y.backward(dy.double())
    return y, x.grad, w.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emulated_gemms_vs_fp32(dtype):
    """Relative Frobenius error of y, dx, dW. Each operand carries ~2.5% rms relative error
    (uniform rounding, spacing 2^-3..2^-4 of the value), independent across the reduction, so
    a product errs by ~sqrt(2) * 2.5% = 3.6% rms: < 5e-2 with margin; bf16 output adds 0.2%."""
    torch.manual_seed(0)
    M, K, N = 320, 512, 384  # 320 tokens: not a multiple of 128 (padded internally)
    x = torch.randn(M, K).to(dtype).requires_grad_()
    w = (torch.randn(N, K) * 0.05).requires_grad_()
    dy = torch.randn(M, N).to(dtype)
    y = FP8LinearFn.apply(x, w, None, False)
    y.backward(dy)
    assert y.dtype == dtype and x.grad.dtype == dtype and w.grad.dtype == torch.float32
    y_ref, dx_ref, dw_ref = _linear_ref(x, w, dy)
    errs = [rel(y, y_ref), rel(x.grad, dx_ref), rel(w.grad, dw_ref)]
    assert max(errs) < 5e-2, errs
    assert min(errs) > 1e-2, errs  # it really is quantized


def test_emulation_uses_deepseek_tiles():
    """Fprop: x 1x128 x W 128x128; Dgrad: dy 1x128 (along N) x W 128x128; Wgrad: 128x1 tiles."""
    torch.manual_seed(1)
    M, K, N = 256, 384, 256
    x, w, dy = torch.randn(M, K).requires_grad_(), torch.randn(N, K).requires_grad_(), torch.randn(M, N)
    y = FP8LinearFn.apply(x, w, None, False)
    y.backward(dy)
    qdq = lambda t, bm, bk: dequant_blocks(*quant_blocks(t, bm, bk), bm, bk)
    torch.testing.assert_close(y, qdq(x, 1, 128) @ qdq(w, 128, 128).t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, qdq(dy, 1, 128) @ qdq(w, 128, 128), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, qdq(dy, 128, 1).t() @ qdq(x, 128, 1), rtol=1e-5, atol=1e-5)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(100, 1024)
        self.q_b_proj = nn.Linear(768, 3072, bias=False)  # converted
        self.kv_a_proj_with_mqa = nn.Linear(1024, 576, bias=False)  # 576 % 128 != 0
        self.mlp = nn.ModuleDict(dict(gate=nn.Linear(1024, 512, bias=False),  # router
                                      gate_proj=nn.Linear(1024, 512, bias=False),  # converted
                                      down_proj=nn.Linear(512, 1024, bias=True),  # converted
                                      tiny=nn.Linear(256, 256)))  # < min size
        self.input_layernorm = nn.LayerNorm(1024)
        self.norm_proj = nn.Linear(1024, 1024)
        self.eh_proj = nn.Linear(2048, 1024, bias=False)
        self.lm_head = nn.Linear(1024, 1024, bias=False)


def test_convert_to_fp8_filter():
    m = _Block()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    params = {n: p for n, p in m.named_parameters()}
    done = convert_to_fp8(m)
    assert sorted(done) == ["mlp.down_proj", "mlp.gate_proj", "q_b_proj"]
    assert all(isinstance(m.get_submodule(n), FP8Linear) for n in done)
    assert type(m.mlp["gate"]) is nn.Linear and type(m.lm_head) is nn.Linear
    # same Parameters (optimizer state survives), same state_dict (checkpoints stay fp32/bf16)
    assert all(p is params[n] for n, p in m.named_parameters())
    assert sd.keys() == m.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
    assert not default_filter("layers.0.mlp.experts.gate", nn.Linear(1024, 1024))
    assert default_filter("layers.0.mlp.shared_experts.up_proj", nn.Linear(1024, 1024))
    assert not default_filter("model.layers.0.mlp.gate_proj", nn.Linear(1024, 1024), min_features=2048)
    x = torch.randn(4, 7, 512)
    lin = m.mlp["down_proj"]
    y = lin(x)  # bias path, 3-D input, 28 tokens
    assert y.shape == (4, 7, 1024)
    assert rel(y, nn.functional.linear(x, lin.weight, lin.bias)) < 5e-2


def test_fp8_mlp_training_tracks_fp32():
    torch.manual_seed(0)
    D, H, B = 512, 1024, 256
    teacher = nn.Sequential(nn.Linear(D, H), nn.GELU(), nn.Linear(H, D))
    data = [torch.randn(B, D) for _ in range(4)]
    targets = [teacher(x).detach() for x in data]
    base = nn.Sequential(nn.Linear(D, H), nn.GELU(), nn.Linear(H, D))
    fp8 = copy.deepcopy(base)
    assert len(convert_to_fp8(fp8)) == 2

    def train(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for step in range(30):
            i = step % 4
            loss = nn.functional.mse_loss(model(data[i]), targets[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    l32, l8 = train(base), train(fp8)
    assert l32[-1] < 0.5 * l32[0]
    last32, last8 = sum(l32[-4:]) / 4, sum(l8[-4:]) / 4
    assert abs(last8 - last32) / last32 < 0.03, (last32, last8)


def _grouped_ref(x, w, offs, dy):
    x, w = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    outs, start = [], 0
    for e, end in enumerate(offs.tolist()):
        outs.append(x[start:end] @ w[e])
        start = end
    y = torch.cat(outs)
    y.backward(dy.double())
    return y, x.grad, w.grad


@pytest.mark.parametrize("recipe", ["rowwise", "blockwise"])
def test_grouped_emulation_matches_fp32_loop(recipe):
    torch.manual_seed(0)
    E, K, M = 4, 256, 384
    offs = torch.tensor([100, 100, 260, 300], dtype=torch.int32)  # uneven, one empty expert
    x = torch.randn(300, K).requires_grad_()
    w_phys = (torch.randn(E, M, K) * 0.05).requires_grad_()  # (E, M, K) param, used transposed
    dy = torch.randn(300, M)
    y = fp8_grouped_mm(x, w_phys.transpose(1, 2), offs, recipe=recipe)
    y.backward(dy)
    y_ref, dx_ref, dw_ref = _grouped_ref(x, w_phys.transpose(1, 2), offs, dy)
    errs = [rel(y, y_ref), rel(x.grad, dx_ref), rel(w_phys.grad.transpose(1, 2), dw_ref)]
    assert max(errs) < 5e-2, errs
    assert w_phys.grad[1].abs().max() == 0  # empty expert gets no gradient


# ---------------------------------------------------------------- native-call contracts (CPU)
# The CUDA paths cannot run here; these fakes enforce the layout checks of torch's
# ScaledBlas.cpp (_scaled_block1x128_block128x128 / _block1x128_block1x128) and of
# _meta_grouped_mm_common, and compute the documented semantics, so the argument plumbing
# (transposes, scale layouts, K-block padding, group padding) is exercised in CI.

def _fake_scaled_mm(a, b, sa, ra, sb, rb, output_dtype=torch.bfloat16):
    F = torch.nn.functional
    (M, K), N = a.shape, b.shape[1]
    Kb = -(-K // 128)
    assert a.stride(1) == 1 and b.stride(0) == 1, "A row-major, B column-major"
    assert ra == F.ScalingType.BlockWise1x128 and sa.shape == (M, Kb) and sa.stride() == (1, M)
    if rb == F.ScalingType.BlockWise128x128:
        L4 = -(-Kb // 4) * 4
        assert sb.shape == (L4, -(-N // 128)) and sb.stride() == (1, L4)
        B = dequant_blocks(b.t(), sb[:Kb].t(), 128, 128)
    else:
        assert sb.shape == (N, Kb) and sb.stride() == (1, N)
        B = dequant_blocks(b.t(), sb, 1, 128)
    return (dequant_blocks(a, sa, 1, 128) @ B.t()).to(output_dtype)


@pytest.mark.parametrize("K", [512, 768])  # 768: 6 K-blocks, padded to 8 for scale_b
def test_native_scaled_mm_contract(monkeypatch, K):
    from nanoseek.fp8 import linear
    monkeypatch.setattr(torch.nn.functional, "scaled_mm", _fake_scaled_mm)
    monkeypatch.setattr(linear, "_WORKING", {})
    torch.manual_seed(0)
    M, N = 256, 384
    x, w, dy = torch.randn(M, K), torch.randn(N, K), torch.randn(M, N)
    cases = [((*quantize_act_1x128(x), *quantize_weight_128x128(w)), 128),  # fprop
             ((*quantize_act_1x128(dy), *quantize_weight_128x128(w, transpose=True)), 128),  # dgrad
             ((*quantize_act_t(dy), *quantize_act_t(x)), 1)]  # wgrad
    for ops, bb in cases:
        out = linear._native_mm_nt(*ops, bb, torch.float32)
        assert torch.equal(out, linear.emulated_mm_nt(*ops, bb, torch.float32))


def _fake_scaled_grouped_mm(a, b, sa, sb, offs=None, out_dtype=torch.bfloat16):
    assert a.stride(-1) == 1 and a.stride(-2) > 1 and b.stride(-2) == 1 and b.stride(-1) > 1
    ends = offs.tolist()
    assert all(e % 16 == 0 for e in ends), "groups must start at multiples of 16 rows"
    starts = [0] + ends[:-1]
    A = a.float()
    if b.dim() == 3:  # 2d x 3d: rows of a grouped; sa (rows,), sb (E, N)
        out = torch.zeros(a.shape[0], b.shape[-1])
        for e, (s, t) in enumerate(zip(starts, ends)):
            out[s:t] = (A[s:t] * sa[s:t, None]) @ (b[e].float() * sb[e][None])
        return out.to(out_dtype)
    Ka, Nb = a.shape[0], b.shape[1]  # 2d x 2d: ragged reduction; scales group-major
    out = torch.zeros(len(ends), Ka, Nb)
    for e, (s, t) in enumerate(zip(starts, ends)):
        out[e] = (A[:, s:t] * sa[e * Ka:(e + 1) * Ka, None]) @ (b[s:t].float() * sb[e * Nb:(e + 1) * Nb])
    return out.to(out_dtype)


def test_native_grouped_contract(monkeypatch):
    from nanoseek.fp8 import grouped
    monkeypatch.setattr(torch, "_scaled_grouped_mm", _fake_scaled_grouped_mm)
    torch.manual_seed(0)
    E, K, M = 4, 256, 128
    offs = torch.tensor([37, 37, 130, 200], dtype=torch.int32)
    x, dy = torch.randn(200, K), torch.randn(200, M)
    w = torch.randn(E, M, K).transpose(1, 2) * 0.05  # (E, K, M) view of an (E, M, K) param
    for op in ("fwd", "dgrad", "wgrad"):
        nat = grouped._native(op, x, w, offs, False, dy).float()
        emu = grouped._emulate(op, x, w, offs, "rowwise", False, dy)
        assert rel(nat, emu) < 5e-3, op  # same scales and bytes; bf16 output rounding only

"""Fused MLA RoPE (+ q/k assembly) and MoE permute / unpermute kernels vs their PyTorch references.

Same scheme as tests/test_kernels.py: `cuda` variants run the compiled kernels (skipped without
CUDA); `interp` variants run the same kernels on CPU tensors in Triton's interpreter, and
test_triton_interpreter re-runs them in a child process with TRITON_INTERPRET=1 (it must be set
before triton is first imported).

Bounds. In the interpreter the kernels' fp32 math is numpy's, op for op the reference's, so the
elementwise results (RoPE out / dq / dk_nope, permute out, unpermute dys) are asserted bitwise
equal in fp32 and bf16. Reductions only differ in summation order (k_pe's head sum, dw's sum over
d, fp32 within 1e-5) - except the permute backward in bf16: eager on CPU accumulates the K rows in
bf16, one rounding per add, while the kernel (like eager's CUDA index_put) sums in fp32 and rounds
once; it is checked bitwise (>= 99.9%) against an fp32-accumulating oracle and within bf16
tolerance against eager. On CUDA (FMA contraction, other reduction orders): fp32 to 2e-5, bf16
within bf16 tolerance and >= 99% bitwise.
"""

import pytest
import torch

from nanoseek import kernels as K
from triton_util import DEVICES, HAS_CUDA, HAS_TRITON, INTERP, run_interpreted


DTYPES = [torch.float32, torch.bfloat16]
BF16 = torch.bfloat16


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.skipif(INTERP, reason="already running in the interpreter")
def test_triton_interpreter():
    """The interp variants of this file, in a child process with TRITON_INTERPRET=1."""
    run_interpreted(__file__, 26)


def _same(a, b, dtype, frac=0.99, scale=1.0):
    """Elementwise results: bitwise in the interpreter; on CUDA within tolerance, bf16 mostly bitwise."""
    assert a.dtype == b.dtype and a.shape == b.shape
    if INTERP:
        assert torch.equal(a, b), (a.float() - b.float()).abs().max()
        return
    _close(a, b, dtype, scale)
    if dtype != torch.float32:
        assert (a == b).float().mean().item() >= frac


def _close(a, b, dtype, scale=1.0):
    assert a.dtype == b.dtype and a.shape == b.shape
    tol = dict(rtol=2e-5, atol=2e-5 * scale) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2 * scale)
    torch.testing.assert_close(a, b, **tol)


def _grads(y, inputs, dy):
    return torch.autograd.grad(y, inputs, dy)


def _cos_sin(B, S, dr, device, per_row=True):
    """The model's tables: YaRN (factor 40, attention factor != 1), positions restarting at each
    packed document (per_row) or one shared (1, S) row. -> cos, sin (B|1, S, dr/2) fp32."""
    from nanoseek.model import ModelConfig
    from nanoseek.model.rope import RotaryEmbedding

    cfg = ModelConfig.preset("tiny")
    cfg.qk_rope_head_dim, cfg.rope_type, cfg.rope_mscale_all_dim = dr, "yarn", 0.707
    rot = RotaryEmbedding(cfg).to(device)
    if per_row:
        pos = torch.stack([torch.cat([torch.arange(c), torch.arange(S - c)]) for c in range(1, B + 1)])
        pos[0] += 3000  # long-context positions too (the YaRN-interpolated band)
    else:
        pos = torch.arange(S)[None]
    cos, sin = rot(pos.to(device))
    assert cos.dtype == torch.float32 and rot.attention_factor != 1.0
    return cos, sin


# --------------------------------------------------------------------------- RoPE

# (B, S, H, dn, dr, layout): odd S / H, dr/2 not a power of two, real MLA dims with H > one
# head chunk of the k backward, q as a row-strided slice or a (B, H, S, D) transpose, cos shared
ROPE_CASES = [(2, 5, 3, 24, 12, "strided"), (1, 3, 20, 128, 64, "transposed"), (3, 4, 2, 16, 8, "shared_cos")]


def _q_input(B, S, H, D, layout, dtype, device):
    if layout == "transposed":
        return torch.randn(B, H, S, D, device=device).to(dtype).transpose(1, 2)  # (B, S, H, D) view
    return torch.randn(B, S, H, D + 5, device=device).to(dtype)[..., :D]  # row stride D + 5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ROPE_CASES, ids=lambda c: c[-1])
def test_rope_q_matches_reference(device, dtype, case):
    B, S, H, dn, dr, layout = case
    torch.manual_seed(0)
    q = (_q_input(B, S, H, dn + dr, layout, dtype, device) * 3).requires_grad_()
    cos, sin = _cos_sin(B, S, dr, device, per_row=layout != "shared_cos")
    y, y_ref = K.rope_q_fused(q, cos, sin, dn), K.rope_q_ref(q, cos, sin, dn)
    assert y.shape == (B, S, H, dn + dr) and y.is_contiguous()
    dy = torch.randn(B, H, S, dn + dr, device=device).to(dtype).transpose(1, 2)  # SDPA-like grad layout
    (dq,), (dq_ref,) = _grads(y, (q,), dy), _grads(y_ref, (q,), dy)
    _same(y, y_ref, dtype)
    _same(dq, dq_ref, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ROPE_CASES[:2], ids=lambda c: c[-1])
def test_rope_k_matches_reference(device, dtype, case):
    """k_nope a slice of the kv_b output (B, T, H, dn + dv), k_pe a slice of kv_a (B, T, dc + dr)."""
    B, T, H, dn, dr, _ = case
    torch.manual_seed(0)
    kv = torch.randn(B, T, H, dn + 7, device=device).to(dtype).requires_grad_()
    kva = (torch.randn(B, T, 11 + dr, device=device) * 3).to(dtype).requires_grad_()
    k_nope, k_pe = kv[..., :dn], kva[..., 11:]
    cos, sin = _cos_sin(B, T, dr, device)
    y, y_ref = K.rope_k_fused(k_nope, k_pe, cos, sin), K.rope_k_ref(k_nope, k_pe, cos, sin)
    dy = torch.randn(B, H, T, dn + dr, device=device).to(dtype).transpose(1, 2)
    (dkv, dkva), (dkv_ref, dkva_ref) = _grads(y, (kv, kva), dy), _grads(y_ref, (kv, kva), dy)
    _same(y, y_ref, dtype)
    _same(dkv, dkv_ref, dtype)  # dk_nope: a copy
    # dk_pe: Σ over H heads (fp32, order differs), rounded, rotated back
    _close(dkva, dkva_ref, dtype, scale=H ** 0.5)
    if dtype == BF16:
        assert (dkva == dkva_ref).float().mean().item() >= 0.99


# --------------------------------------------------------------------------- MoE permute

# (T, K, E, d, strided x/ys): K = 1 (EP's call), d not a power of two, d > one column tile
MOE_CASES = [(37, 6, 8, 100, True), (5, 1, 3, 77, False), (24, 8, 64, 1100, False)]


def _routing(T, k, E, device):
    idx = torch.rand(T, E, device=device).topk(k, dim=-1).indices  # (T, K) distinct experts per token
    order = idx.reshape(-1).argsort(stable=True)  # (T*K,) pairs sorted by expert, as experts_grouped
    return order, K.inverse_permutation(order).view(T, k)


def _rows(T, d, dtype, device, strided):
    """(T, d), row stride d + 9 when strided (a column slice, as the model's views)."""
    return torch.randn(T, d + (9 if strided else 0), device=device).to(dtype)[:, :d]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MOE_CASES, ids=lambda c: f"T{c[0]}K{c[1]}d{c[3]}")
def test_moe_permute_matches_reference(device, dtype, case):
    T, K_, E, d, strided = case
    torch.manual_seed(0)
    order, inv = _routing(T, K_, E, device)
    x = _rows(T, d, dtype, device, strided).requires_grad_()
    xs, xs_ref = K.moe_permute_fused(x, inv), K.moe_permute_ref(x, order, K_)
    dxs = torch.randn(T * K_, d, device=device).to(dtype)
    (dx,), (dx_ref,) = _grads(xs, (x,), dxs), _grads(xs_ref, (x,), dxs)
    assert torch.equal(xs, xs_ref)  # a copy, on any device
    _close(dx, dx_ref, dtype, scale=K_ ** 0.5)
    if dtype == BF16:  # the oracle: the same gradient summed in fp32, rounded once
        xf = x.detach().float().requires_grad_()
        (dx32,) = _grads(K.moe_permute_ref(xf, order, K_), (xf,), dxs.float())
        assert (dx == dx32.to(dtype)).float().mean().item() >= 0.999
        torch.testing.assert_close(dx.float(), dx32, rtol=2 ** -8, atol=1e-6)  # one rounding off fp32
    else:
        assert dx.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MOE_CASES, ids=lambda c: f"T{c[0]}K{c[1]}d{c[3]}")
def test_moe_unpermute_matches_reference(device, dtype, case):
    T, K_, E, d, strided = case
    torch.manual_seed(0)
    order, inv = _routing(T, K_, E, device)
    ys = _rows(T * K_, d, dtype, device, strided).requires_grad_()
    w = (torch.rand(T, K_, device=device) * 2.5).requires_grad_()  # the router's fp32 weights
    y, y_ref = K.moe_unpermute_fused(ys, w, inv, dtype), K.moe_unpermute_ref(ys, w, inv, dtype)
    dy = torch.randn(T, d, device=device).to(dtype)
    (dys, dw), (dys_ref, dw_ref) = _grads(y, (ys, w), dy), _grads(y_ref, (ys, w), dy)
    assert dw.dtype == torch.float32 and dys.dtype == dtype
    _close(y, y_ref, dtype, scale=K_ ** 0.5)
    if dtype == BF16:  # fp32 sum of K products, one rounding: as eager
        assert (y == y_ref).float().mean().item() >= (0.999 if INTERP else 0.99)
    _same(dys, dys_ref, dtype)
    _close(dw, dw_ref, torch.float32, scale=d ** 0.5)  # Σ_d in fp32, another order


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    cos, sin = torch.zeros(2, 0, 4, device=device), torch.zeros(2, 0, 4, device=device)
    q = torch.randn(2, 0, 3, 24, device=device, requires_grad=True)
    k_pe = torch.randn(2, 0, 8, device=device, requires_grad=True)
    yq, yk = K.rope_q_fused(q, cos, sin, 16), K.rope_k_fused(q[..., :16], k_pe, cos, sin)
    dq, dk = torch.autograd.grad(yq.sum() + yk.sum(), (q, k_pe))
    assert yq.shape == q.shape and yk.shape == (2, 0, 3, 24) and dq.shape == q.shape and dk.shape == k_pe.shape
    x = torch.randn(0, 64, device=device, requires_grad=True)
    w = torch.rand(0, 2, device=device, requires_grad=True)
    inv = torch.zeros(0, 2, dtype=torch.long, device=device)
    xs = K.moe_permute_fused(x, inv)
    out = K.moe_unpermute_fused(xs, w, inv, x.dtype)
    dx, dw = torch.autograd.grad(out.sum() + xs.sum(), (x, w))
    assert xs.shape == (0, 64) and out.shape == (0, 64) and dx.shape == x.shape and dw.shape == w.shape


# --------------------------------------------------------------------------- in the model

def _spy_fused(monkeypatch, force: bool):
    """Count the dispatchers' calls of the fused ops; force: take the fused path on any device
    (the interpreter runs them on CPU tensors)."""
    import nanoseek.kernels.permute as mp
    import nanoseek.kernels.rope as rp

    calls = {}
    for mod, names in ((rp, ("rope_q_fused", "rope_k_fused")), (mp, ("moe_permute_fused", "moe_unpermute_fused"))):
        if force:
            monkeypatch.setattr(mod, "use_fused", lambda *ts: True)
        for n in names:
            def counted(*a, _f=getattr(mod, n), _n=n):
                calls[_n] = calls.get(_n, 0) + 1
                return _f(*a)
            monkeypatch.setattr(mod, n, counted)
    return calls


def _expected_calls(m):
    from nanoseek.model.attention import MLA

    n_attn, n_moe = sum(isinstance(x, MLA) for x in m.modules()), len(m.moe_layers())
    assert n_attn == 5 and n_moe == 4  # tiny: 4 layers (3 MoE) + 1 MTP layer (MoE)
    return dict(rope_q_fused=n_attn, rope_k_fused=n_attn, moe_permute_fused=n_moe, moe_unpermute_fused=n_moe)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_model_through_dispatchers_matches_reference(device, dtype, monkeypatch):
    """Tiny model, packed documents (positions restart), MTP: the real call sites and shapes
    (strided k_pe / k_nope views, per-token cos/sin) through the dispatchers, fused vs reference."""
    from nanoseek.model import DeepSeekV3, ModelConfig

    torch.manual_seed(0)
    m = DeepSeekV3(ModelConfig.preset("tiny")).to(device=device, dtype=dtype).train()
    m.use_flex = False
    ids = torch.randint(0, 2048, (2, 20), device=device)
    doc = torch.tensor([[0] * 8 + [1] * 12, [0] * 20], device=device)
    pos = torch.stack([torch.cat([torch.arange(8), torch.arange(12)]), torch.arange(20)]).to(device)

    def run():
        m.zero_grad()
        o = m(ids, position_ids=pos, doc_ids=doc, mtp=True)
        (o.logits.float().pow(2).mean() + o.mtp_hidden[0].float().pow(2).mean()).backward()
        return o.logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    ref_logits, ref_grads = run()
    calls = _spy_fused(monkeypatch, force=True)
    logits, grads = run()
    assert calls == _expected_calls(m)
    assert grads.keys() == ref_grads.keys()
    if INTERP:  # forward: elementwise + a sum over K = 2 (order-free): bitwise. Measured: equal
        assert torch.equal(logits, ref_logits)
    else:
        _close(logits.float(), ref_logits.float(), dtype, scale=4)
    # grads: reduction orders (dw over d, permute bwd, k_pe's head sum) differ; measured in the
    # interpreter: fp32 worst relative norm error 4.5e-7, bf16 bitwise equal
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for n in grads:
        g, r = grads[n].float(), ref_grads[n].float()
        assert (g - r).norm() <= tol * r.norm() + 1e-12, n


@pytest.mark.skipif(not (INTERP and HAS_TRITON), reason="runs inside test_triton_interpreter")
def test_interpreter_really_used():
    from nanoseek.kernels import triton_moe, triton_rope
    for k in (triton_rope._rope_fwd_kernel, triton_rope._rope_bwd_q_kernel, triton_rope._rope_bwd_k_kernel,
              triton_moe._permute_fwd_kernel, triton_moe._permute_bwd_kernel, triton_moe._unpermute_fwd_kernel,
              triton_moe._unpermute_bwd_kernel):
        assert type(k).__name__ == "InterpretedFunction"


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.skipif(INTERP, reason="compiles the real kernels, not the interpreted ones")
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
def test_kernels_compile_for_a_gpu_target():
    """No GPU needed: Triton's front end and NVIDIA backend turn each kernel into an sm_90 cubin
    (bf16 pointers), which the interpreter never does (it runs the Python body). Compile errors
    fail; a Triton without this AOT API or without ptxas skips."""
    import inspect

    import triton
    from nanoseek.kernels import triton_moe as M, triton_rope as R

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.compiler.errors import CompilationError
    except ImportError as e:
        pytest.skip(f"triton AOT API: {e}")
    rope_c, moe_c = dict(BM=16, BDN=128, BHF=32), dict(BT=4, BD=512)
    jobs = [(R._rope_fwd_kernel, rope_c), (R._rope_bwd_q_kernel, rope_c),
            (R._rope_bwd_k_kernel, dict(BH=16, BDN=128, BHF=32)), (M._permute_fwd_kernel, moe_c),
            (M._permute_bwd_kernel, moe_c), (M._unpermute_fwd_kernel, moe_c), (M._unpermute_bwd_kernel, moe_c)]
    for fn, consts in jobs:
        sig = {}
        for n in inspect.signature(fn.fn).parameters:  # *_ptr: bf16 (cos/sin/w fp32, inv int64), else i32
            ptr = "fp32" if n in ("cos_ptr", "sin_ptr", "w_ptr", "dw_ptr") else "i64" if n == "inv_ptr" else "bf16"
            sig[n] = "constexpr" if n in consts else "*" + ptr if n.endswith("_ptr") else "i32"
        try:
            k = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                               options=dict(num_warps=4))
        except CompilationError:
            raise
        except Exception as e:  # noqa: BLE001 - another Triton's AOT signature format, no ptxas, ...
            pytest.skip(f"AOT compile unavailable here: {type(e).__name__}: {str(e)[:200]}")
        assert len(k.asm["cubin"]) > 0, fn.fn.__name__


# --------------------------------------------------------------------------- dispatch

def test_cpu_dispatch_is_the_reference_bitwise():
    """Switch on, CPU tensors: the dispatchers return the reference (no autograd.Function)."""
    orig = K.fused_enabled()
    K.set_fused(True)
    try:
        torch.manual_seed(0)
        q = torch.randn(2, 5, 3, 24, dtype=BF16, requires_grad=True)
        cos, sin = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
        y = K.rope_q(q, cos, sin, 16)
        assert type(y.grad_fn).__name__ == "CatBackward0" and torch.equal(y, K.rope_q_ref(q, cos, sin, 16))
        yk = K.rope_k(q[..., :16], q[:, :, 0, 16:], cos, sin)
        assert type(yk.grad_fn).__name__ == "CatBackward0"
        order = torch.randperm(12)
        inv = K.inverse_permutation(order).view(6, 2)
        assert torch.equal(order[inv.reshape(-1)], torch.arange(12))
        x = torch.randn(6, 8, requires_grad=True)
        xs = K.moe_permute(x, order, inv)
        assert type(xs.grad_fn).__name__ == "IndexBackward0" and torch.equal(xs, x[order // 2])
        out = K.moe_unpermute(xs, torch.rand(6, 2), inv, x.dtype)
        assert type(out.grad_fn).__name__ != "MoEUnpermuteFnBackward"
    finally:
        K.set_fused(orig)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA" if not HAS_CUDA else "needs triton")
def test_cuda_model_dispatches_to_fused(monkeypatch):
    """The real dispatch conditions on CUDA under bf16 autocast: every call site takes the fused path."""
    from nanoseek.model import DeepSeekV3, ModelConfig

    torch.manual_seed(0)
    m = DeepSeekV3(ModelConfig.preset("tiny")).cuda()
    ids = torch.randint(0, 2048, (2, 64), device="cuda")
    calls = _spy_fused(monkeypatch, force=False)
    orig = K.fused_enabled()
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            K.set_fused(True)
            y = m(ids, mtp=True).logits
            assert calls == _expected_calls(m)
            K.set_fused(False)
            y_ref = m(ids, mtp=True).logits
            assert calls == _expected_calls(m)  # no more fused calls with the switch off
    finally:
        K.set_fused(orig)
    _close(y.float(), y_ref.float(), BF16, scale=4)

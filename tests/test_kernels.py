"""Fused Triton kernels (nanoseek.kernels) vs their PyTorch references, forward and backward.

Each kernel check has two variants:
* cuda: the compiled kernels on a GPU (skipped without CUDA).
* interp: the same kernels on CPU tensors in Triton's interpreter. TRITON_INTERPRET=1 only takes
  effect if set before triton is first imported (triton.language's own helpers are decorated
  then), and in a full run torch.utils.flop_counter imports triton early. So
  test_triton_interpreter re-runs this file's interp tests in a fresh process with the variable
  set; they only exist in that process (or under `TRITON_INTERPRET=1 pytest tests/test_kernels.py`).
"""
import os
import subprocess
import sys

import pytest
import torch

from nanoseek import kernels as K
from triton_util import DEVICES, HAS_CUDA, HAS_TRITON, INTERP, run_interpreted


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.skipif(INTERP, reason="already running in the interpreter")
def test_triton_interpreter():
    """The interp variants of this file, in a child process with TRITON_INTERPRET=1."""
    run_interpreted(__file__, 18)


def _close(a, b, dtype, scale=1.0):
    tol = dict(rtol=2e-5, atol=2e-5 * scale) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2 * scale)
    torch.testing.assert_close(a, b, **tol)


def _mostly_equal(a, b, frac=0.99):
    """bf16: the kernels round like PyTorch, so nearly every element is bitwise equal."""
    assert (a == b).float().mean().item() >= frac


def _grads(y, inputs, dy):
    return torch.autograd.grad(y, inputs, dy)


# --------------------------------------------------------------------------- RMSNorm

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("xdt,wdt", [(torch.float32,) * 2, (torch.bfloat16,) * 2,
                                     (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("shape", [(3, 7, 100), (37, 768), (2, 1)])  # odd rows, N not 2^k
def test_rmsnorm_matches_reference(device, xdt, wdt, shape):
    torch.manual_seed(0)
    N = shape[-1]
    x = (torch.randn(shape, device=device) * 3).to(xdt).requires_grad_()
    w = (1 + 0.1 * torch.randn(N, device=device)).to(wdt).requires_grad_()
    y, y_ref = K.rms_norm_fused(x, w, 1e-6), K.rms_norm_ref(x, w, 1e-6)
    assert y.dtype == y_ref.dtype == torch.promote_types(xdt, wdt) and y.shape == x.shape
    dy = torch.randn_like(y_ref)
    (dx, dw), (dx_ref, dw_ref) = _grads(y, (x, w), dy), _grads(y_ref, (x, w), dy)
    assert dx.dtype == xdt and dw.dtype == wdt
    _close(y, y_ref, y.dtype)
    _close(dx, dx_ref, xdt)
    _close(dw, dw_ref, wdt, scale=(x.numel() / N) ** 0.5)  # dw sums over rows
    if xdt == torch.bfloat16:
        _mostly_equal(y, y_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_rmsnorm_strided_input(device):
    """x a column slice (row stride != N), as `kv_a[..., :kv_lora_rank]` in MLA."""
    torch.manual_seed(0)
    base = torch.randn(2, 9, 96, device=device, requires_grad=True)
    w = torch.randn(80, device=device, requires_grad=True)
    x = base[..., :80]
    y, y_ref = K.rms_norm_fused(x, w, 1e-6), K.rms_norm_ref(x, w, 1e-6)
    dy = torch.randn_like(y)
    for a, b in zip((y, *_grads(y, (base, w), dy)), (y_ref, *_grads(y_ref, (base, w), dy))):
        _close(a, b, torch.float32, scale=4)


# --------------------------------------------------------------------------- SwiGLU

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3, 77), (70, 1000)])  # rows not a multiple of the tile
def test_swiglu_matches_reference(device, dtype, shape):
    torch.manual_seed(0)
    g = (torch.randn(shape, device=device) * 3).to(dtype).requires_grad_()
    u = torch.randn(shape, device=device).to(dtype).requires_grad_()
    y, y_ref = K.swiglu_fused(g, u), K.swiglu_ref(g, u)
    dy = torch.randn_like(y_ref)
    outs, refs = (y, *_grads(y, (g, u), dy)), (y_ref, *_grads(y_ref, (g, u), dy))
    for a, b in zip(outs, refs):
        assert a.dtype == b.dtype and a.shape == b.shape
        _close(a, b, dtype)
        if dtype == torch.bfloat16:
            _mostly_equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_cat_matches_reference(device, dtype):
    """h = [gate | up] (T, 2I) as the grouped expert GEMM writes it; dh in one buffer."""
    torch.manual_seed(0)
    h = (torch.randn(37, 2 * 96, device=device) * 3).to(dtype).requires_grad_()
    y, y_ref = K.swiglu_cat_fused(h), K.swiglu_cat_ref(h)
    dy = torch.randn_like(y_ref)
    (dh,), (dh_ref,) = _grads(y, (h,), dy), _grads(y_ref, (h,), dy)
    assert y.shape == (37, 96) and dh.shape == h.shape
    _close(y, y_ref, dtype)
    _close(dh, dh_ref, dtype)
    if dtype == torch.bfloat16:
        _mostly_equal(y, y_ref)
        _mostly_equal(dh, dh_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    x = torch.randn(0, 64, device=device, requires_grad=True)
    w = torch.ones(64, device=device, requires_grad=True)
    y, h = K.rms_norm_fused(x, w, 1e-6), K.swiglu_cat_fused(x)
    dx, dw = torch.autograd.grad(y.sum() + h.sum(), (x, w))
    assert y.shape == x.shape and h.shape == (0, 32) and dx.shape == x.shape and not dw.any()


# --------------------------------------------------------------------------- dispatch

@pytest.mark.skipif(not (INTERP and HAS_TRITON), reason="runs inside test_triton_interpreter")
def test_interpreter_really_used():
    from nanoseek.kernels import triton_rmsnorm, triton_swiglu
    for k in (triton_rmsnorm._rms_fwd_kernel, triton_rmsnorm._rms_bwd_kernel,
              triton_swiglu._swiglu_fwd_kernel, triton_swiglu._swiglu_bwd_kernel):
        assert type(k).__name__ == "InterpretedFunction"


def test_cpu_model_path_is_the_reference_bitwise():
    """On CPU the model's RMSNorm / MLP / expert SwiGLU are exactly the reference code."""
    from nanoseek.model.mlp import MLP
    from nanoseek.model.moe import _swiglu
    from nanoseek.model.norm import RMSNorm

    torch.manual_seed(0)
    x = torch.randn(4, 6, 64, dtype=torch.bfloat16)
    norm = RMSNorm(64).to(torch.bfloat16)
    assert torch.equal(norm(x), K.rms_norm_ref(x, norm.weight, norm.eps))
    mlp = MLP(64, 96)
    xf = x.float()
    assert torch.equal(mlp(xf), mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(xf)) * mlp.up_proj(xf)))
    h = torch.randn(9, 2 * 48)
    assert torch.equal(_swiglu(h), K.swiglu_cat_ref(h))


def test_switch_and_env_var():
    orig = K.fused_enabled()
    try:
        K.set_fused(False)
        assert not K.fused_enabled() and not K.use_fused(torch.zeros(1))
    finally:
        K.set_fused(orig)
    code = "from nanoseek import kernels; print(kernels.fused_enabled())"
    for env, want in (("0", "False"), ("1", "True"), (None, "False")):  # off unless asked for (not yet run on a GPU)
        e = {k: v for k, v in os.environ.items() if k != "NANOSEEK_FUSED"}
        if env is not None:
            e["NANOSEEK_FUSED"] = env
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=e).stdout
        assert out.strip() == want


def test_imports_and_runs_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from nanoseek.kernels import triton_available, rms_norm, swiglu_cat\n"
            "from nanoseek.model import DeepSeekV3, ModelConfig\n"
            "assert not triton_available()\n"
            "print(rms_norm(torch.ones(2, 8), torch.ones(8), 1e-6).shape, swiglu_cat(torch.ones(2, 8)).shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "torch.Size([2, 8]) torch.Size([2, 4])" in r.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA" if not HAS_CUDA else "needs triton")
def test_cuda_model_modules_dispatch_to_fused():
    from nanoseek.model.mlp import MLP
    from nanoseek.model.norm import RMSNorm

    torch.manual_seed(0)
    norm, mlp = RMSNorm(256).cuda(), MLP(256, 384).cuda()
    x = torch.randn(3, 50, 256, device="cuda", requires_grad=True)
    orig = K.fused_enabled()
    K.set_fused(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = mlp(norm(x))
        assert type(norm(x).grad_fn).__name__ == "RMSNormFnBackward"
        K.set_fused(False)
        try:
            y_ref = mlp(norm(x))
            assert type(norm(x).grad_fn).__name__ != "RMSNormFnBackward"
        finally:
            K.set_fused(orig)
    gx, gx_ref = torch.autograd.grad(y.float().sum(), x), torch.autograd.grad(y_ref.float().sum(), x)
    _close(y.float(), y_ref.float(), torch.bfloat16)
    _close(gx[0], gx_ref[0], torch.bfloat16)

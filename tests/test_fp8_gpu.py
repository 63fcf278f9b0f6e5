"""GPU checks of the FP8 path: Triton quant kernels == PyTorch reference, native blockwise
scaled_mm == emulation of the same tiles, FP8Linear / grouped fwd+bwd on CUDA vs CPU."""
import pytest
import torch

from nanoseek.fp8 import (FP8LinearFn, fp8_grouped_mm, fp8_mm_nt, quantize_act_1x128,
                          quantize_act_t, quantize_weight_128x128, set_fp8_backend)
from nanoseek.fp8.linear import emulated_mm_nt
from nanoseek.fp8.quant import quant_blocks

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
sm90 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                          reason="blockwise scaled_mm is SM90-only (cuBLASLt)")


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _codes(q):  # e4m3 bytes -> signed integers, monotonic in value (so |diff| = ulps)
    c = q.view(torch.uint8).int().cpu()
    return torch.where(c >= 128, -(c - 128), c)


def _same_fp8(a, b):
    assert a.shape == b.shape
    d = (_codes(a) - _codes(b)).abs()
    assert d.max() <= 1, f"{int(d.max())} ulp"
    assert (d > 0).float().mean() < 1e-4  # the kernels are meant to be bit exact


@cuda
@pytest.mark.parametrize("pow2", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_act_quant_matches_reference(pow2, dtype):
    torch.manual_seed(0)
    x = (torch.randn(2, 333, 1024, device="cuda") * 5).to(dtype)
    x[0, 0, :128] = 0  # all-zero tile -> clamped amax
    q, s = quantize_act_1x128(x, pow2)
    q_ref, s_ref = quant_blocks(x.cpu().reshape(-1, 1024), 1, 128, pow2)
    _same_fp8(q.reshape(-1, 1024), q_ref)
    assert torch.equal(s.reshape(-1, 8).cpu(), s_ref)
    assert s.reshape(-1, 8).stride() == (1, 666)  # column-major, as scaled_mm wants


@cuda
@pytest.mark.parametrize("pow2", [False, True])
def test_triton_act_quant_t_matches_reference(pow2):
    torch.manual_seed(1)
    x = torch.randn(1000, 384, device="cuda", dtype=torch.bfloat16)  # partial last 128x1 tile
    q, s = quantize_act_t(x, pow2)
    q_ref, s_ref = quant_blocks(x.cpu().t(), 1, 128, pow2)
    assert q.shape == (384, 1000) and s.shape == (384, 8) and s.stride() == (1, 384)
    _same_fp8(q, q_ref)
    assert torch.equal(s.cpu(), s_ref)


@cuda
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("shape", [(576, 200), (1536, 7168 // 4)])
def test_triton_weight_quant_matches_reference(transpose, shape):
    torch.manual_seed(2)
    w = torch.randn(*shape, device="cuda") * 0.02
    for pow2 in (False, True):
        q, s = quantize_weight_128x128(w, pow2, transpose)
        q_ref, s_ref = quant_blocks(w.cpu(), 128, 128, pow2)
        if transpose:
            q_ref, s_ref = q_ref.t().contiguous(), s_ref.t().contiguous()
        _same_fp8(q, q_ref)
        assert torch.equal(s.cpu(), s_ref)


@sm90
@pytest.mark.parametrize("b_block", [128, 1])
@pytest.mark.parametrize("K", [1024, 768])  # 768: K/128 = 6 is not a multiple of 4
def test_native_blockwise_scaled_mm(b_block, K):
    """The native cuBLAS path is taken (no fallback) and equals the emulation of the same tiles."""
    torch.manual_seed(3)
    M, N = 512, 384
    a, a_s = quantize_act_1x128(torch.randn(M, K, device="cuda"))
    if b_block == 128:
        b, b_s = quantize_weight_128x128(torch.randn(N, K, device="cuda"))
    else:
        b, b_s = quantize_act_1x128(torch.randn(N, K, device="cuda"))
    out = fp8_mm_nt(a, a_s, b, b_s, b_block, torch.float32, backend="native")
    ref = emulated_mm_nt(a.cpu(), a_s.cpu(), b.cpu(), b_s.cpu(), b_block, torch.float32)
    assert rel(out.cpu(), ref) < 1e-3


@cuda
@pytest.mark.parametrize("backend", ["auto", "emulate"])
def test_fp8_linear_cuda_vs_cpu_emulation(backend):
    torch.manual_seed(4)
    M, K, N = 1000, 1024, 768
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda") * 0.03
    dy = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
    grads = []
    for dev, be in (("cuda", backend), ("cpu", "emulate")):
        prev = set_fp8_backend(be)
        try:
            xi = x.detach().to(dev).requires_grad_()  # fresh leaves per device
            wi = w.detach().to(dev).requires_grad_()
            y = FP8LinearFn.apply(xi, wi, None, False)
            y.backward(dy.to(dev))
            grads.append((y, xi.grad, wi.grad))
        finally:
            set_fp8_backend(prev)
    (y, dx, dw), (y0, dx0, dw0) = grads
    assert y.dtype == torch.bfloat16 and dw.dtype == torch.float32
    for a, b in ((y, y0), (dx, dx0), (dw, dw0)):
        assert rel(a.cpu(), b) < 1e-2  # same tiles; only bf16 output rounding / sum order differ
    ref = (x.float() @ w.t())
    assert rel(y, ref) < 5e-2


@cuda
def test_fp8_grouped_cuda_vs_cpu_emulation():
    torch.manual_seed(5)
    E, K, M = 4, 512, 256
    offs = torch.tensor([100, 100, 333, 400], dtype=torch.int32)
    x = torch.randn(400, K, dtype=torch.bfloat16)
    w = torch.randn(E, M, K) * 0.05  # param layout (E, M, K), used as (E, K, M) view
    dy = torch.randn(400, M, dtype=torch.bfloat16)
    res = []
    for dev in ("cuda", "cpu"):
        xi = x.to(dev).requires_grad_()
        wi = w.to(dev).requires_grad_()
        y = fp8_grouped_mm(xi, wi.transpose(1, 2), offs.to(dev), recipe="rowwise")
        y.backward(dy.to(dev))
        res.append((y.cpu(), xi.grad.cpu(), wi.grad.cpu()))
    for a, b in zip(*res):
        assert rel(a, b) < 2e-2

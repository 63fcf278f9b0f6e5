"""Triton MLA RoPE + q/k assembly, forward/backward (GPU; also runs under TRITON_INTERPRET=1).

Rows r = (b, s, h) of an output (B, S, H, dn + dr), contiguous: [nope | rot(pe)], where rot
reads interleaved pairs (x1, x2) = pe[2j], pe[2j+1] and writes halves [o1 | o2]:
o1 = x1 c - x2 s, o2 = x2 c + x1 s, with rope.rope_ref's roundings (c, s cast to x.dtype, each
product and each sum rounded to x.dtype; math in fp32). The backward is the same rotation with
-s, reading halves and writing pairs (the transposed permutation). For k the rope source is one
(B, T, dr) key shared by all heads (head stride 0); its backward sums the H heads' gradients
in fp32 and rounds once (what autograd's expand backward does) before rotating back.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import cast_rne


@triton.jit
def _rotate(x1, x2, c, s, dt: tl.constexpr):
    # (o1, o2) = (x1 c - x2 s, x2 c + x1 s); products and sums rounded to dt like eager in dt
    a = cast_rne(x1 * c, dt).to(tl.float32) - cast_rne(x2 * s, dt).to(tl.float32)
    b = cast_rne(x2 * c, dt).to(tl.float32) + cast_rne(x1 * s, dt).to(tl.float32)
    return cast_rne(a, dt), cast_rne(b, dt)


@triton.jit
def _cos_sin(cos_ptr, sin_ptr, off, j, mask, dt: tl.constexpr):
    # cos/sin (.., HALF) at row offsets `off`, rounded to dt (the reference's cos.to(x.dtype)), fp32
    c = tl.load(cos_ptr + off + j, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + off + j, mask=mask, other=0.0).to(tl.float32)
    return cast_rne(c, dt).to(tl.float32), cast_rne(s, dt).to(tl.float32)


@triton.jit
def _rope_fwd_kernel(nope_ptr, pe_ptr, cos_ptr, sin_ptr, out_ptr, snb, sns, snh, spb, sps, sph,
                     scb, scs, M, S, H, DN, HALF,
                     BM: tl.constexpr, BDN: tl.constexpr, BHF: tl.constexpr):
    # program: BM rows of out (M = B*S*H, DN + 2*HALF); nope / pe strided per (b, s, h)
    dt: tl.constexpr = out_ptr.dtype.element_ty
    r = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)  # (BM,)
    rm = r < M
    h, bs = r % H, r // H
    b, s = bs // S, bs % S
    D = DN + 2 * HALF
    cn = tl.arange(0, BDN)[None, :]
    m = rm[:, None] & (cn < DN)
    v = tl.load(nope_ptr + (b * snb + s * sns + h * snh)[:, None] + cn, mask=m)  # (BM, BDN)
    tl.store(out_ptr + r[:, None] * D + cn, v, mask=m)
    j = tl.arange(0, BHF)[None, :]
    m = rm[:, None] & (j < HALF)
    pe = pe_ptr + (b * spb + s * sps + h * sph)[:, None] + 2 * j
    x1 = tl.load(pe, mask=m, other=0.0).to(tl.float32)  # (BM, BHF) even elements
    x2 = tl.load(pe + 1, mask=m, other=0.0).to(tl.float32)  # odd elements
    c, sn = _cos_sin(cos_ptr, sin_ptr, (b * scb + s * scs)[:, None], j, m, dt)
    o1, o2 = _rotate(x1, x2, c, sn, dt)
    tl.store(out_ptr + r[:, None] * D + DN + j, o1, mask=m)
    tl.store(out_ptr + r[:, None] * D + DN + HALF + j, o2, mask=m)


@triton.jit
def _rope_bwd_q_kernel(do_ptr, dq_ptr, cos_ptr, sin_ptr, sdb, sds, sdh, scb, scs, M, S, H, DN, HALF,
                       BM: tl.constexpr, BDN: tl.constexpr, BHF: tl.constexpr):
    # program: BM rows; dout (B, S, H, D) strided -> dq (M, D) contiguous, pairs re-interleaved
    dt: tl.constexpr = dq_ptr.dtype.element_ty
    r = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    rm = r < M
    h, bs = r % H, r // H
    b, s = bs // S, bs % S
    D = DN + 2 * HALF
    src = do_ptr + (b * sdb + s * sds + h * sdh)[:, None]  # (BM, 1) row starts of dout
    cn = tl.arange(0, BDN)[None, :]
    m = rm[:, None] & (cn < DN)
    tl.store(dq_ptr + r[:, None] * D + cn, tl.load(src + cn, mask=m), mask=m)
    j = tl.arange(0, BHF)[None, :]
    m = rm[:, None] & (j < HALF)
    g1 = tl.load(src + DN + j, mask=m, other=0.0).to(tl.float32)  # (BM, BHF) grad of o1
    g2 = tl.load(src + DN + HALF + j, mask=m, other=0.0).to(tl.float32)
    c, sn = _cos_sin(cos_ptr, sin_ptr, (b * scb + s * scs)[:, None], j, m, dt)
    d1, d2 = _rotate(g1, g2, c, -sn, dt)
    tl.store(dq_ptr + r[:, None] * D + DN + 2 * j, d1, mask=m)
    tl.store(dq_ptr + r[:, None] * D + DN + 2 * j + 1, d2, mask=m)


@triton.jit
def _rope_bwd_k_kernel(do_ptr, dkn_ptr, dkp_ptr, cos_ptr, sin_ptr, sdb, sds, sdh, scb, scs, S, H,
                       DN, HALF, BH: tl.constexpr, BDN: tl.constexpr, BHF: tl.constexpr):
    # program: one token (b, t); dout (B, T, H, D) strided -> dk_nope (B*T*H, DN), dk_pe (B*T, 2*HALF)
    dt: tl.constexpr = dkp_ptr.dtype.element_ty
    tok = tl.program_id(0).to(tl.int64)
    b, s = tok // S, tok % S
    cn = tl.arange(0, BDN)[None, :]
    j = tl.arange(0, BHF)
    jm = j < HALF
    acc1 = tl.zeros((BHF,), dtype=tl.float32)
    acc2 = tl.zeros((BHF,), dtype=tl.float32)
    for h0 in range(0, H, BH):
        hh = h0 + tl.arange(0, BH)  # (BH,)
        hm = (hh < H)[:, None]
        src = do_ptr + (b * sdb + s * sds + hh * sdh)[:, None]  # (BH, 1)
        m = hm & (cn < DN)
        tl.store(dkn_ptr + (tok * H + hh)[:, None] * DN + cn, tl.load(src + cn, mask=m), mask=m)
        m = hm & jm[None, :]
        acc1 += tl.sum(tl.load(src + DN + j[None, :], mask=m, other=0.0).to(tl.float32), axis=0)
        acc2 += tl.sum(tl.load(src + DN + HALF + j[None, :], mask=m, other=0.0).to(tl.float32), axis=0)
    g1 = cast_rne(acc1, dt).to(tl.float32)  # the head-summed grad of the shared key, in dt
    g2 = cast_rne(acc2, dt).to(tl.float32)
    c, sn = _cos_sin(cos_ptr, sin_ptr, b * scb + s * scs, j, jm, dt)
    d1, d2 = _rotate(g1, g2, c, -sn, dt)
    tl.store(dkp_ptr + tok * 2 * HALF + 2 * j, d1, mask=jm)
    tl.store(dkp_ptr + tok * 2 * HALF + 2 * j + 1, d2, mask=jm)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _blocks(dn: int, half: int):
    bdn, bhf = max(1, triton.next_power_of_2(dn)), max(1, triton.next_power_of_2(half))
    bm = max(1, 4096 // (bdn + 2 * bhf))
    return 1 << (bm.bit_length() - 1), bdn, bhf  # rows per program: a power of two


def rope_fwd(nope: torch.Tensor, pe: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """nope (B, S, H, dn), pe (B, S, H, dr) (any strides; head stride 0 = one shared key),
    cos, sin (B, S, dr/2) -> out (B, S, H, dn + dr) contiguous in nope.dtype."""
    B, S, H, dn = nope.shape
    dr = pe.shape[-1]
    nope, pe, cos, sin = _unit_last(nope), _unit_last(pe), _unit_last(cos), _unit_last(sin)
    out = torch.empty((B, S, H, dn + dr), dtype=nope.dtype, device=nope.device)
    M = B * S * H
    bm, bdn, bhf = _blocks(dn, dr // 2)
    if M:
        _rope_fwd_kernel[(triton.cdiv(M, bm),)](
            nope, pe, cos, sin, out, *nope.stride()[:3], *pe.stride()[:3], *cos.stride()[:2],
            M, S, H, dn, dr // 2, BM=bm, BDN=bdn, BHF=bhf, num_warps=4)
    return out


def rope_bwd_q(dout: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dn: int) -> torch.Tensor:
    """dout (B, S, H, dn + dr) -> dq (B, S, H, dn + dr) contiguous (rope part back to pairs)."""
    B, S, H, D = dout.shape
    dout, cos, sin = _unit_last(dout), _unit_last(cos), _unit_last(sin)
    dq = torch.empty((B, S, H, D), dtype=dout.dtype, device=dout.device)
    M = B * S * H
    bm, bdn, bhf = _blocks(dn, (D - dn) // 2)
    if M:
        _rope_bwd_q_kernel[(triton.cdiv(M, bm),)](
            dout, dq, cos, sin, *dout.stride()[:3], *cos.stride()[:2], M, S, H, dn, (D - dn) // 2,
            BM=bm, BDN=bdn, BHF=bhf, num_warps=4)
    return dq


def rope_bwd_k(dout: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dn: int):
    """dout (B, T, H, dn + dr) -> dk_nope (B, T, H, dn), dk_pe (B, T, dr) (summed over heads)."""
    B, T, H, D = dout.shape
    dout, cos, sin = _unit_last(dout), _unit_last(cos), _unit_last(sin)
    dkn = torch.empty((B, T, H, dn), dtype=dout.dtype, device=dout.device)
    dkp = torch.empty((B, T, D - dn), dtype=dout.dtype, device=dout.device)
    _, bdn, bhf = _blocks(dn, (D - dn) // 2)
    bh = min(max(1, triton.next_power_of_2(H)), max(1, 4096 // (bdn + 2 * bhf)))
    bh = 1 << (bh.bit_length() - 1)
    if B * T:
        _rope_bwd_k_kernel[(B * T,)](
            dout, dkn, dkp, cos, sin, *dout.stride()[:3], *cos.stride()[:2], T, H, dn, (D - dn) // 2,
            BH=bh, BDN=bdn, BHF=bhf, num_warps=4)
    return dkn, dkp

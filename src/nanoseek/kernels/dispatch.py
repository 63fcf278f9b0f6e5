"""When to take the fused Triton path: a plain CUDA tensor, triton importable, and the switch on.

Switch: off by default until the kernels have been checked and timed on a GPU (they have only run
in Triton's CPU interpreter so far); env `NANOSEEK_FUSED=1` at import or `set_fused(True)` turns
them on. Under torch.compile
the reference path is traced instead (Inductor fuses those elementwise ops itself).
"""
from __future__ import annotations

import functools
import os

import torch

_FUSED = os.environ.get("NANOSEEK_FUSED", "0") == "1"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def set_fused(enabled: bool) -> None:
    global _FUSED
    _FUSED = bool(enabled)


def fused_enabled() -> bool:
    return _FUSED


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _plain_cuda(t: torch.Tensor) -> bool:
    # DTensor / FakeTensor and other subclasses keep the reference path
    return type(t) in (torch.Tensor, torch.nn.Parameter) and t.is_cuda and t.dtype in DTYPES


def use_fused(*ts: torch.Tensor) -> bool:
    if not _FUSED or torch.compiler.is_compiling():
        return False
    return all(_plain_cuda(t) for t in ts) and triton_available()


def rows2d(t: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (M, n), unit stride along n (a view unless a copy is needed)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()

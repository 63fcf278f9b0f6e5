"""Shared set-up of the Triton kernel tests: the device parametrisation and the child process that
re-runs a test file's `interp` variants in Triton's CPU interpreter (TRITON_INTERPRET must be set
before triton is imported, so it cannot be switched on inside this process)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanoseek.kernels.dispatch import triton_available

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = triton_available()
INTERP = os.environ.get("TRITON_INTERPRET") == "1"  # this process runs kernels in the interpreter

if INTERP:
    DEVICES = [pytest.param("cpu", id="interp", marks=pytest.mark.skipif(not HAS_TRITON, reason="needs triton"))]
else:
    DEVICES = [pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not (HAS_CUDA and HAS_TRITON), reason="needs CUDA" if not HAS_CUDA else "needs triton")])]


def run_interpreted(test_file: str, min_passed: int) -> None:
    """Run `test_file`'s interp variants in a child with TRITON_INTERPRET=1; all must pass, none skip,
    and at least `min_passed` must run (a filter that silently selects nothing fails)."""
    cmd = [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", test_file,
           "-k", "interp and not test_triton_interpreter"]
    r = subprocess.run(cmd, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "TRITON_INTERPRET": "1"})
    log = r.stdout[-4000:] + r.stderr[-2000:]
    assert r.returncode == 0, log
    summary = r.stdout.strip().splitlines()[-1]
    assert int(re.search(r"(\d+) passed", summary)[1]) >= min_passed and "skipped" not in summary, log

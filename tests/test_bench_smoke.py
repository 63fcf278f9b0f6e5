"""Smoke tests of the benchmark scripts on CPU: they run, exit 0 and write what they promise.

The timings are meaningless here (FP8 is emulated on CPU); the GPU session runs the same scripts
(bench/gpu_session4.sh). Each subprocess keeps to one thread and a tiny model (a few seconds).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_script(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_bench_fp8_train_tiny_cpu(tmp_path):
    out = tmp_path / "fp8_train.json"
    p = run_script(["bench/bench_fp8_train.py", "--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1",
                    "--batch", "2", "--seq", "64", "--out", str(out)])
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "timings" in p.stdout and "mean nothing" in p.stdout  # the CPU run says its timings are meaningless
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"bf16", "fp8"} and not res["errors"]
    bf16, fp8 = res["runs"]["bf16"], res["runs"]["fp8"]
    assert res["timings_meaningful"] is False and res["fp8_backend"] == "emulate"
    assert bf16["n_fp8_linears"] == 0 and fp8["n_fp8_linears"] > 0  # the fp8 run really converted Linears
    assert bf16["init_checksum"] == fp8["init_checksum"]  # same init
    for r in (bf16, fp8):
        assert len(r["loss"]) == len(r["lm_loss"]) == len(r["step_s"]) == 2
        assert r["tokens_per_step"] == 2 * 64 and r["peak_mem_gb"] is None
    c = res["compare"]["fp8"]
    assert c["vs"] == "bf16" and c["same_init"] and c["speedup"] > 0
    # emulated FP8 tracks bf16 closely over two steps of a fresh model
    assert c["rel_loss_diff"]["final"] < 0.01 and "mean_last_2" in c["rel_loss_diff"]
    assert c["goal_speedup_met"] is None  # not judged on CPU


def test_bench_kernels_without_cuda():
    p = run_script(["bench/bench_kernels.py", "--no-compile"])
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        assert "needs a CUDA GPU" in p.stdout


def test_bench_pretrain_fused_variant_switch():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_pretrain
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from nanoseek.kernels import fused_enabled, set_fused

    before = fused_enabled()
    try:
        set_fused(False)
        assert bench_pretrain.set_fused_for("flex_fused") is False and fused_enabled()
        set_fused(False)
        assert bench_pretrain.set_fused_for("flex") is False and not fused_enabled()  # existing variants unchanged
    finally:
        set_fused(before)


def test_gpu_session4_script_is_valid_and_within_budget():
    """bash -n, and the per-step timeouts (plus the 2 s kill grace of each) stay under 580 s."""
    script = ROOT / "bench" / "gpu_session4.sh"
    p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    text = script.read_text()
    assert 'T="timeout -k 2"' in text
    limits = [int(m) for m in re.findall(r"^\$T (\d+) ", text, flags=re.M)]
    assert len(limits) == 6 and sum(limits) + 2 * len(limits) < 580, limits
    for f in ("tests/test_kernels.py", "tests/test_fp8_gpu.py", "tests/test_model_gpu.py", "bench/bench_kernels.py",
              "bench/bench_fp8_train.py", "bench/bench_pretrain.py"):
        assert f in text and (ROOT / f).exists(), f
    assert "flex,flex_fused" in text

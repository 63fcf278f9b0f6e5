"""`torchrun -m nanoseek.dist.run`: k steps under PP2 1F1B, DCP save, HF export that loads."""

import os
import subprocess
import sys

import torch

from test_dist_parallel import free_port


def test_torchrun_trains_saves_and_exports(tmp_path):
    env = {**os.environ, "NANOSEEK_DIST_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "nanoseek.dist.run", "--model", "tiny", "--model-overrides", '{"hidden_size": 64}',
           "--pp", "2", "--schedule", "1F1B", "--steps", "2", "--batch", "8", "--seq", "32",
           "--save", str(tmp_path / "ckpt"), "--export", str(tmp_path / "hf")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=170)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [l for l in r.stdout.splitlines() if l.startswith("step")]
    assert len(steps) == 2 and "loss" in steps[0], r.stdout
    from nanoseek.model import DeepSeekV3

    m = DeepSeekV3.from_pretrained(tmp_path / "hf")
    assert m.config.hidden_size == 64 and torch.isfinite(m.lm_head.weight).all()
    assert (m.model.layers[1].mlp.gate.e_score_correction_bias != 0).any()  # router biases travelled too

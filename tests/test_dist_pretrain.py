"""`torchrun -m nanoseek pretrain --parallel.*`: the real pretraining job on 2 gloo processes (CPU).

One single-process run with a global batch of 4 packed sequences is the reference; DP2 (launched as
two one-process "nodes" meeting through torchrun's c10d rendezvous), EP2 and PP2 runs of the same
job on the same data must log the same losses (fp32, 1e-5 relative)."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from test_train import SMALL, losses, nanoseek

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun/gloo")
STEPS, TOL = 4, 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "NANOSEEK_DIST_CPU": "1"}


def torchrun(*args, nproc=2, check=True, timeout=180):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "-m", "nanoseek", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(r.stdout[-2000:] + r.stderr[-4000:])
    return r


def two_nodes(*args, timeout=180):
    """Two torchrun agents (one process each) that find each other through the c10d rendezvous,
    as on two machines: `--nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT`."""
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=nanoseek-test", "-m", "nanoseek", *args]
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
    outs = [p.communicate(timeout=timeout) for p in ps]
    for p, (out, err) in zip(ps, outs):
        assert p.returncode == 0, out[-2000:] + err[-4000:]


def with_batch(b):
    a = list(SMALL)
    a[a.index("--train.batch_size") + 1] = str(b)
    return a


def close(got, ref):
    return len(got) == len(ref) and all(abs(a - b) <= TOL * abs(b) for a, b in zip(got, ref))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain") / "single"
    nanoseek("pretrain", *with_batch(4), "--train.steps", str(STEPS), "--out", str(run))  # global batch 4
    return run


def new_run(single, name):
    run = single.parent / name
    run.mkdir()
    shutil.copytree(single / "data", run / "data")  # reused: the data config is the same
    return run


def test_dp2_over_two_nodes_matches_single_process_and_resumes(single):
    run = new_run(single, "dp2")
    dist_args = [*with_batch(2), "--train.steps", str(STEPS), "--parallel.dp", "2", "--train.ckpt_every", "2"]
    two_nodes("pretrain", *dist_args, "--out", str(run))  # 2 ranks × 2 sequences

    ref, got = losses(single), losses(run)
    assert close(got, ref), (got, ref)
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "train/loss" in r] == [1, 2, 3, 4]  # only rank 0 writes metrics
    assert recs[0]["train/tokens_seen"] == 4 * 64  # the global batch
    assert (run / "checkpoints" / "step_000004" / ".metadata").exists()  # DCP
    assert json.loads((run / "cost.json").read_text())["tokens"] == STEPS * 4 * 64

    from nanoseek.model.hf import from_pretrained

    model = from_pretrained(run / "model")  # the HF export loads, tokenizer beside it
    assert (run / "model" / "tokenizer.json").exists()
    assert model.config.num_hidden_layers == 2

    # resume from the step-2 DCP checkpoint (now on one node): the same losses afterwards
    shutil.rmtree(run / "checkpoints" / "step_000004")
    (run / "metrics.jsonl").write_text("".join((run / "metrics.jsonl").read_text().splitlines(True)[:2]))
    torchrun("pretrain", *dist_args, "--out", str(run), "--resume")
    assert losses(run) == got


@pytest.mark.parametrize("name,layout,batch", [("ep2", ["--parallel.ep", "2"], 2),
                                               ("pp2", ["--parallel.pp", "2", "--parallel.microbatches", "2"], 4)])
def test_ep_and_pp_pretrain_match_single_process(single, name, layout, batch):
    run = new_run(single, name)  # PP2: one dp rank, so it reads the whole global batch of 4
    torchrun("pretrain", *with_batch(batch), "--train.steps", str(STEPS), *layout, "--out", str(run))
    assert close(losses(run), losses(single)), (losses(run), losses(single))


def test_invalid_layout_fails_with_a_message(tmp_path):
    r = torchrun("pretrain", *SMALL, "--train.steps", "1", "--parallel.ep", "3", "--out", str(tmp_path / "bad"),
                 check=False, timeout=120)
    assert r.returncode != 0
    assert "ep=3 must divide dp=2" in r.stderr
    assert not (tmp_path / "bad").exists()  # rejected before any data work
    r = torchrun("pretrain", *with_batch(3), "--train.steps", "1", "--parallel.pp", "2", "--out", str(tmp_path / "bad"),
                 check=False, timeout=120)
    assert r.returncode != 0 and "must be a multiple of the 4 pipeline micro-batches" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_unknown_parallel_key_is_a_config_error(tmp_path):
    r = nanoseek("pretrain", *SMALL, "--parallel.dpp", "2", "--out", str(tmp_path / "x"), check=False)
    assert r.returncode == 2 and "parallel.dpp" in r.stderr

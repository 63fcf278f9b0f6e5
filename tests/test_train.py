"""Trainer: exact kill-and-resume, config/checkpoint errors, schedules, optimizer groups."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.model.config import ConfigError
from nanoseek.train.config import OptimConfig, PretrainConfig, TrainConfig, load_config, parse_overrides
from nanoseek.train.optim import lr_at, micro_batches_at, param_groups

SMALL = ["--config", "tiny-cpu", "--train.progress", "false", "--train.log_every", "100", "--train.eval_every", "1000",
         "--optim.warmup_steps", "2", "--model_overrides", '{"num_hidden_layers": 2, "hidden_size": 64}',
         "--data.vocab_size", "512", "--data.tokenizer_train_bytes", "100000", "--data.seq_len", "64",
         "--data.corpus.max_bytes", "200000", "--data.corpus.stdlib_max_bytes", "100000", "--train.batch_size", "4"]


def nanoseek(*args, check=True, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "nanoseek", *args], capture_output=True, text=True, env=env, **kw)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr[-3000:])
    return r


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Prepare the small dataset once; runs copy it (the trainer reuses it when the data config matches)."""
    run = tmp_path_factory.mktemp("prep")
    nanoseek("pretrain", *SMALL, "--out", str(run), "--train.steps", "1")
    return run / "data"


def new_run(tmp_path, data_dir, name):
    run = tmp_path / name
    run.mkdir()
    shutil.copytree(data_dir, run / "data")
    return run


def losses(run):
    return [json.loads(l)["train/loss"] for l in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in l]


def test_sigkill_and_resume_logs_the_same_losses(tmp_path, data_dir):
    args = [*SMALL, "--train.steps", "14", "--train.ckpt_every", "5"]
    ref = new_run(tmp_path, data_dir, "ref")
    nanoseek("pretrain", *args, "--out", str(ref))
    run = new_run(tmp_path, data_dir, "killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "nanoseek", "pretrain", *args, "--out", str(run)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step_000005" / "COMPLETE").exists():  # kill mid-training, after a checkpoint
        assert time.time() < deadline and p.poll() is None, "run ended before the first checkpoint"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    n_before = len(losses(run))
    assert 5 <= n_before < 14
    nanoseek("pretrain", *args, "--out", str(run), "--resume")
    got = losses(run)
    # the metrics file keeps steps logged before the kill; resumed steps continue from the checkpoint
    resumed = got[n_before:]
    assert resumed == losses(ref)[14 - len(resumed):]
    assert len(resumed) >= 9
    assert losses(ref)[-1] < losses(ref)[0]
    assert (run / "model" / "tokenizer.json").exists() and (run / "cost.json").exists()
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    rec = [r for r in recs if "data/useful_fraction" in r][-1]
    assert 0.9 < rec["data/useful_fraction"] <= 1.0  # packed: almost every position carries a loss term


def test_existing_run_needs_resume_and_corrupt_checkpoint_is_kept(tmp_path, data_dir):
    run = new_run(tmp_path, data_dir, "r")
    nanoseek("pretrain", *SMALL, "--out", str(run), "--train.steps", "2", "--train.ckpt_every", "2")
    r = nanoseek("pretrain", *SMALL, "--out", str(run), "--train.steps", "4", check=False)
    assert r.returncode == 2 and "--resume" in r.stderr
    ck = run / "checkpoints" / "step_000002"
    (ck / "optimizer.pt").write_bytes(b"garbage")
    r = nanoseek("pretrain", *SMALL, "--out", str(run), "--train.steps", "4", "--resume", check=False)
    assert r.returncode == 2 and "step_000002" in r.stderr and "optimizer" in r.stderr
    assert (ck / "optimizer.pt").read_bytes() == b"garbage"  # never overwritten
    r = nanoseek("pretrain", *SMALL, "--out", str(run), "--train.steps", "4", "--resume", "--optim.lr", "0.1", check=False)
    assert r.returncode == 2


def test_config_errors_name_the_key(tmp_path):
    r = nanoseek("pretrain", "--config", "tiny-cpu", "--optim.lrr", "1", "--out", str(tmp_path / "x"), check=False)
    assert r.returncode == 2 and "optim.lrr" in r.stderr
    r = nanoseek("pretrain", "--config", "tiny-cpu", "--data.corpus.max_byte", "1", "--out", str(tmp_path / "x"), check=False)
    assert r.returncode == 2 and "max_byte" in r.stderr
    r = nanoseek("pretrain", "--config", "nope", check=False)
    assert r.returncode == 2 and "tiny-cpu" in r.stderr
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(PretrainConfig, "pretrain", "tiny-cpu", {"train": {"precision": "fp16"}})


def test_data_errors_fail_early_naming_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine line of text that is long enough to keep"}\n{not json\n')
    r = nanoseek("pretrain", "--config", "tiny-cpu", "--data", str(bad), "--out", str(tmp_path / "x"), check=False)
    assert r.returncode == 2 and "bad.jsonl" in r.stderr and "2" in r.stderr


def test_parse_overrides():
    assert parse_overrides(["--optim.lr", "3e-4", "--train.steps=5", "--name", "x"]) == {
        "optim": {"lr": 3e-4}, "train": {"steps": 5}, "name": "x"}


def test_schedules_and_batch_ramp():
    o = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_at(0, o, 100) == pytest.approx(0.1) and lr_at(9, o, 100) == pytest.approx(1.0)
    assert lr_at(99, o, 100) == pytest.approx(0.1, abs=1e-3)
    w = OptimConfig(lr=1.0, warmup_steps=0, schedule="wsd", decay_frac=0.2, min_lr_ratio=0.0)
    assert lr_at(50, w, 100) == 1.0 and lr_at(90, w, 100) == pytest.approx(0.5)
    t = TrainConfig(grad_accum=8, batch_ramp_steps=10, batch_ramp_start=2)
    assert [micro_batches_at(s, t) for s in (0, 5, 10, 50)] == [2, 5, 8, 8]


def test_no_weight_decay_on_norms_and_biases():
    m = DeepSeekV3(ModelConfig.preset("tiny"))
    decay, no_decay = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    assert all("norm" in names[id(p)] or p.dim() < 2 for p in no_decay["params"])
    assert any("experts.gate_up_proj" in names[id(p)] for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0

"""`nanoseek report` renders from a fixture run directory's structured files."""

import json
import shutil

import pytest

from nanoseek.report import render_report


def test_report_from_fixture(tmp_path):
    run = tmp_path / "run"
    shutil.copytree("tests/fixtures/run_pretrain", run)
    md = render_report(run).read_text()
    assert "| pretrain | 100 |" in md  # stage from cost.json, steps from metrics.jsonl
    assert "9.053 →" in md and "val" in md
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary[0]["tokens"] == 614400 and summary[0]["val_loss"] is not None
    pngs = sorted(p.name for p in (run / "report").glob("*.png"))
    assert "pretrain_loss.png" in pngs and "pretrain_expert_load.png" in pngs


def test_report_over_pipeline_stages(tmp_path):
    for stage in ("sft", "grpo"):
        d = tmp_path / "pipe" / stage
        d.mkdir(parents=True)
        rows = [{"step": i, "train/loss": 2.0 - 0.1 * i, "reward": 0.1 * i, "accuracy": 0.05 * i} for i in range(1, 6)]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        (d / "cost.json").write_text(json.dumps({"stage": stage, "tokens": 100, "device_hours": 0.001}))
    md = render_report(tmp_path / "pipe").read_text()
    assert "| sft | 5 |" in md and "| grpo | 5 |" in md and "grpo_reward.png" in md  # named by directory


def test_report_cli_errors_name_the_directory(tmp_path, capsys):
    from nanoseek.cli import main as cli_main

    for path, why in [(tmp_path / "missing", "no such run directory"), (tmp_path, "no metrics.jsonl")]:
        with pytest.raises(SystemExit) as e:
            cli_main(["report", str(path)])
        assert e.value.code == 2 and why in capsys.readouterr().err
    assert not (tmp_path / "report").exists()  # nothing written for a directory that is not a run


def test_report_names_a_corrupt_json_file(tmp_path, capsys):
    from nanoseek.cli import main as cli_main

    run = tmp_path / "run"
    shutil.copytree("tests/fixtures/run_pretrain", run)
    (run / "cost.json").write_text('{"stage": ')  # truncated
    with pytest.raises(SystemExit):
        cli_main(["report", str(run)])
    assert "cost.json: not JSON" in capsys.readouterr().err

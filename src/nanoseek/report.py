"""`nanoseek report RUN_DIR`: a short markdown report with plots, built from the run's structured
files (metrics.jsonl, cost.json, eval/report JSON), never from parsed console output.

A run directory is one stage (pretrain, sft, grpo, ...) or a pipeline directory whose
subdirectories are stages; every directory holding a metrics.jsonl is reported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (plot file, title, y label, metric keys) — a plot is drawn when any key occurs in the stage
PLOTS = [
    ("loss", "loss", "nats/token", ["train/loss", "train/lm_loss", "val/loss"]),
    ("expert_load", "expert load imbalance (max/mean)", "max / mean tokens per expert", ["moe/imbalance_mean", "moe/imbalance_max"]),
    ("reward", "reward and accuracy", "", ["reward", "accuracy", "eval/accuracy"]),
    ("throughput", "throughput", "tokens/s", ["perf/tokens_per_s"]),
]


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ReportError(f"{path}:{i}: not JSON ({e})") from e
    return rows


class ReportError(ValueError):
    """The run directory cannot be reported on; the message names the directory or file."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e})") from None


def stage_dirs(run: Path) -> list[Path]:
    if (run / "metrics.jsonl").exists():
        return [run]
    found = sorted({p.parent for p in run.rglob("metrics.jsonl") if "checkpoints" not in p.parts})
    if not found:
        raise ReportError(f"{run}: no metrics.jsonl in it or below it (is this a nanoseek run directory?)")
    return found


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r.get("step", i), r[key]) for i, r in enumerate(rows) if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_stage(rows: list[dict], out_dir: Path, stage: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    for name, title, ylabel, keys in PLOTS:
        present = [k for k in keys if series(rows, k)[0]]
        if not present:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for k in present:
            x, y = series(rows, k)
            ax.plot(x, y, label=k, marker="o" if len(x) < 20 else None, markersize=3)
        ax.set(title=f"{stage}: {title}", xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        f = out_dir / f"{stage}_{name}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    return files


def stage_summary(d: Path, rows: list[dict]) -> dict:
    cost = _read_json(d / "cost.json") if (d / "cost.json").exists() else {}
    last = {}
    for r in rows:
        last.update({k: v for k, v in r.items() if isinstance(v, (int, float))})
    first_loss = next((r["train/loss"] for r in rows if "train/loss" in r), None)
    return {"stage": cost.get("stage", d.name), "dir": str(d), "steps": last.get("step"), "first_loss": first_loss,
            "last_loss": last.get("train/loss"), "val_loss": last.get("val/loss"), "val_bpb": last.get("val/bpb"),
            "reward": last.get("reward"), "accuracy": last.get("accuracy"), "tokens": cost.get("tokens"),
            "hours": cost.get("device_hours"), "mfu": cost.get("mfu"), "dollars": cost.get("dollars"),
            "device": cost.get("device")}


def _fmt(v, spec: str = ".4g") -> str:
    return "–" if v is None else (format(v, spec) if isinstance(v, float) else str(v))


def render_report(run: str | Path) -> Path:
    run = Path(run)
    if not run.is_dir():
        raise ReportError(f"{run}: no such run directory")
    dirs = stage_dirs(run)  # fails with a message before anything is written
    out_dir = run / "report"
    out_dir.mkdir(exist_ok=True)
    lines = [f"# nanoseek run report: `{run}`", ""]
    summaries, plots = [], []
    for d in dirs:
        rows = read_metrics(d / "metrics.jsonl")
        s = stage_summary(d, rows)
        if d != run:  # a pipeline: name stages by their directory (0_base, 1_cold_start_sft, ...)
            s["stage"] = d.name
        summaries.append(s)
        plots += plot_stage(rows, out_dir, d.name if d != run else s["stage"])
    lines += ["| stage | steps | loss first → last | val loss | val bits/byte | reward | accuracy | tokens | device-hours | MFU | $ |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        mfu = f"{100 * s['mfu']:.1f}%" if s["mfu"] else "n/a"
        lines.append(f"| {s['stage']} | {_fmt(s['steps'])} | {_fmt(s['first_loss'], '.3f')} → {_fmt(s['last_loss'], '.3f')} | "
                     f"{_fmt(s['val_loss'], '.3f')} | {_fmt(s['val_bpb'], '.3f')} | {_fmt(s['reward'], '.3f')} | "
                     f"{_fmt(s['accuracy'], '.3f')} | {_fmt(s['tokens'])} | {_fmt(s['hours'], '.4f')} | {mfu} | {_fmt(s['dollars'], '.2f')} |")
    pipeline = run / "report.json"
    if pipeline.exists():
        lines += ["", "## Pipeline evaluation", "", "```json", json.dumps(_read_json(pipeline), indent=2)[:4000], "```"]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    else:
        lines += ["", "(plots skipped: matplotlib is not installed; `pip install matplotlib`)"]
    (out_dir / "summary.json").write_text(json.dumps(summaries, indent=2))
    md = out_dir / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main_report(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek report", description="Markdown report with plots for a run directory.")
    ap.add_argument("run")
    a = ap.parse_args(argv)
    try:
        md = render_report(a.run)
    except ReportError as e:
        ap.error(str(e))
    print(md.read_text())
    print(f"report: {md}")
    return 0

"""Run metrics: one fixed-format line per step under a progress bar, JSONL on disk, optional TensorBoard."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def fmt_duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class MetricsLogger:
    """Writes `metrics.jsonl` (one JSON object per event, namespaced keys) and prints step lines."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, progress: bool = True,
                 tensorboard: bool = False, append: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append and self.path.exists():
            self.path.unlink()
        self.total = total_steps
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=False)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:
                self.print("tensorboard is not installed; pip install tensorboard (metrics.jsonl is still written)")

    def print(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def log(self, record: dict[str, Any], line: str | None = None) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record.get("step", 0))
        if line:
            self.print(line)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def step_line(step: int, total: int, m: dict[str, Any], eta_s: float) -> str:
    """The fixed-format per-step line: step, loss, lr, grad norm, tokens/s, MFU, ETA (+ MoE balance)."""
    mfu = m.get("perf/mfu")
    parts = [
        f"step {step:>{len(str(total))}d}/{total}",
        f"loss {m['train/loss']:.4f}",
        f"lr {m['train/lr']:.2e}",
        f"gnorm {m['train/grad_norm']:.3f}",
        f"tok/s {m['perf/tokens_per_s']:,.0f}",
        f"mfu {100 * mfu:.1f}%" if mfu is not None else "mfu n/a",
    ]
    if "moe/imbalance_mean" in m:
        parts.append(f"imb {m['moe/imbalance_mean']:.2f}")
    parts.append(f"eta {fmt_duration(eta_s)}")
    return " | ".join(parts)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        t = time.perf_counter()
        dt, self.t0 = t - self.t0, t
        return dt

"""`nanoseek ablate`: measure the seeds' claims (CLAIMS.md C1-C12) with small matched experiments.

Each claim is a function `(Ctx) -> Record` in `nanoseek.ablate_claims`, registered in `CLAIMS`.
A claim that does not hold at tiny scale is a finding, not a failure: the record says so and why.
Outputs: DIR/ablate.json (one record per claim) and DIR/ablate.md (a table built from the JSON,
never from printed text). Design note: docs/ablate.md.

    nanoseek ablate                      # every claim that can run here
    nanoseek ablate --claims C2,C5 --quick --out runs/ablate
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "does not hold at this scale", "inconclusive", "not run"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_RUN)


@dataclass
class Record:
    """One claim's result. `measured` maps a name to {"value", "unit"}; `details` is free-form."""

    claim: str
    title: str
    seed_number: str  # what the seeds / the V3 report claim, quoted from CLAIMS.md
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdict: str = NOT_RUN
    why: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    headline: str = ""  # the measured number shown in the table
    seconds: float = 0.0

    def add(self, name: str, value: Any, unit: str = "") -> Any:
        self.measured[name] = {"value": value, "unit": unit}
        return value

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class Ctx:
    """What every claim function receives: run size and where to put side files."""

    quick: bool = False
    seed: int = 0
    out: Path = Path("runs/ablate")

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


def judge(value: float | None, target: float, better: str = "lower", noise: float = 0.0) -> str:
    """Verdict for one number against the seed's threshold.

    better="lower": the claim holds when value <= target (e.g. a ratio that should be small);
    "higher": when value >= target. Within `noise` of the target (the run-to-run spread we
    expect at tiny scale) the answer is "inconclusive" rather than a coin flip.
    """
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    if value is None:
        return NOT_RUN
    margin = (target - value) if better == "lower" else (value - target)
    if abs(margin) <= noise:
        return INCONCLUSIVE
    return HOLDS if margin > 0 else FAILS


ClaimFn = Callable[[Ctx], Record]
CLAIMS: dict[str, ClaimFn] = {}


def claim(cid: str) -> Callable[[ClaimFn], ClaimFn]:
    """Register a claim function under its CLAIMS.md id."""
    def deco(fn: ClaimFn) -> ClaimFn:
        CLAIMS[cid] = fn
        return fn
    return deco


def _load_claims() -> None:
    from . import ablate_claims  # noqa: F401  (registers C1..C12)


def parse_claims(spec: str | None) -> list[str]:
    """'C1,c5' -> ['C1', 'C5']; an unknown id is an error that names it."""
    _load_claims()
    if not spec:
        return list(CLAIMS)
    ids = [s.strip().upper() for s in spec.split(",") if s.strip()]
    bad = [i for i in ids if i not in CLAIMS]
    if bad:
        raise ValueError(f"unknown claim id(s): {', '.join(bad)}; known: {', '.join(CLAIMS)}")
    return ids


@contextlib.contextmanager
def _threads(n: int | None):
    """Tiny models gain nothing from threads; on a shared 2-core box extra threads cost up to 10x."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_claim(cid: str, ctx: Ctx) -> Record:
    """Run one claim; a crash becomes an 'inconclusive' record with the error, not a lost run."""
    t = time.perf_counter()
    torch.manual_seed(ctx.seed)
    try:
        rec = CLAIMS[cid](ctx)
    except Exception as e:  # one broken experiment must not hide the others' results
        rec = Record(cid, cid, "", verdict=INCONCLUSIVE, why=f"experiment failed: {type(e).__name__}: {e}",
                     details={"traceback": traceback.format_exc(limit=4)})
    rec.seconds = round(time.perf_counter() - t, 2)
    return rec


def run_ablations(ids: list[str], ctx: Ctx, threads: int | None = 1, log=print) -> list[Record]:
    ctx.out.mkdir(parents=True, exist_ok=True)
    recs = []
    with _threads(threads):
        for cid in ids:
            recs.append(run_claim(cid, ctx))
            log(f"{cid}: {recs[-1].verdict} ({recs[-1].seconds:.1f}s) {recs[-1].headline}")
    write_outputs(recs, ctx)
    return recs


def _cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown(recs: list[Record], quick: bool = False) -> str:
    head = ["# nanoseek ablate", ""]
    if quick:
        head += ["*--quick: a few steps per arm; training-based verdicts (C1 loss, C4, C6, C8, C9) are smoke tests, not findings.*", ""]
    rows = ["| claim | title | seed's number | measured | verdict |", "|---|---|---|---|---|"]
    rows += [f"| {r.claim} | {_cell(r.title)} | {_cell(r.seed_number)} | {_cell(r.headline)} | {r.verdict} |" for r in recs]
    notes = [f"- **{r.claim}** ({r.seconds:.1f}s): {_cell(r.why)}" for r in recs]
    return "\n".join([*head, *rows, "", "## Why", "", *notes, ""])


def write_outputs(recs: list[Record], ctx: Ctx) -> None:
    meta = {"quick": ctx.quick, "seed": ctx.seed, "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M"),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}
    (ctx.out / "ablate.json").write_text(json.dumps({"meta": meta, "claims": [asdict(r) for r in recs]}, indent=2, default=str))
    (ctx.out / "ablate.md").write_text(markdown(recs, ctx.quick))


def main_ablate(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek ablate", description="Measure the seeds' claims C1-C12 at small scale.")
    ap.add_argument("--claims", default=None, help="comma-separated ids, e.g. C1,C2 (default: all)")
    ap.add_argument("--out", default="runs/ablate", help="output directory for ablate.json / ablate.md")
    ap.add_argument("--quick", action="store_true", help="smaller experiments (tests, smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = leave as is)")
    a = ap.parse_args(argv)
    try:
        ids = parse_claims(a.claims)
    except ValueError as e:
        ap.error(str(e))
    recs = run_ablations(ids, Ctx(quick=a.quick, seed=a.seed, out=Path(a.out)), a.threads or None)
    print(markdown(recs, a.quick))
    return 0


__all__ = ["Record", "Ctx", "judge", "claim", "CLAIMS", "parse_claims", "run_claim", "run_ablations", "markdown",
           "main_ablate", "HOLDS", "FAILS", "INCONCLUSIVE", "NOT_RUN"]

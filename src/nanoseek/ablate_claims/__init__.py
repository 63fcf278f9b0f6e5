"""One small module per group of claims; importing this package registers C1-C12 in `ablate.CLAIMS`."""

from . import arch, data, rl, system  # noqa: F401  (order = C1..C12 after sorting below)
from ..ablate import CLAIMS

_ordered = dict(sorted(CLAIMS.items(), key=lambda kv: int(kv[0][1:])))
CLAIMS.clear()
CLAIMS.update(_ordered)

"""Peak dense tensor-core FLOP/s by GPU, and MFU.

Datasheets quote sparse (2:4) peaks with an asterisk; the numbers here are the dense ones (half).
An unknown GPU (or the CPU) gives None, so MFU is reported as unknown rather than guessed
(nanochat does the same, STYLE.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    name: str
    bf16: float  # dense BF16 tensor-core peak, FLOP/s
    fp8: float | None  # dense FP8 peak, FLOP/s; None where the GPU has no FP8 tensor cores
    memory_gb: float
    source: str


_T = 1e12
GPUS: dict[str, GpuSpec] = {s.name: s for s in (
    # NVIDIA A100 datasheet: BF16 312 TFLOPS (624 sparse), same for SXM and PCIe; no FP8.
    GpuSpec("A100-SXM", 312 * _T, None, 80, "NVIDIA A100 datasheet"),
    GpuSpec("A100-PCIe", 312 * _T, None, 80, "NVIDIA A100 datasheet"),
    # NVIDIA H100 datasheet: SXM BF16 1,979 / FP8 3,958 TFLOPS sparse -> 989 / 1,979 dense;
    # PCIe 1,513 / 3,026 -> 756 / 1,513; NVL 1,671 / 3,341 -> 835 / 1,671.
    GpuSpec("H100-SXM", 989 * _T, 1979 * _T, 80, "NVIDIA H100 datasheet"),
    GpuSpec("H100-PCIe", 756 * _T, 1513 * _T, 80, "NVIDIA H100 datasheet"),
    GpuSpec("H100-NVL", 835 * _T, 1671 * _T, 94, "NVIDIA H100 datasheet"),
    # H800 SXM: the export H100, same tensor cores and clocks, NVLink cut to 400 GB/s
    # (EFFICIENCY.md §5; the V3 report trains on it).
    GpuSpec("H800-SXM", 989 * _T, 1979 * _T, 80, "= H100 SXM (export variant)"),
    # NVIDIA H200 datasheet: SXM same compute as H100 SXM, 141 GB HBM3e; NVL 1,671 / 3,341 sparse.
    GpuSpec("H200-SXM", 989 * _T, 1979 * _T, 141, "NVIDIA H200 datasheet"),
    GpuSpec("H200-NVL", 835 * _T, 1671 * _T, 141, "NVIDIA H200 datasheet"),
    # NVIDIA HGX B200 datasheet (per GPU): BF16 4.5 PF / FP8 9 PF sparse -> 2.25 / 4.5 dense.
    GpuSpec("B200", 2250 * _T, 4500 * _T, 180, "NVIDIA HGX B200 datasheet"),
)}

# Family regexes; the look-behind keeps "GH200"/"GB200" (different parts) from matching H200/B200.
_FAMILIES = ("A100", "H100", "H800", "H200", "B200")


def lookup(name: str | None) -> GpuSpec | None:
    """'NVIDIA H100 80GB HBM3' / 'H800' / 'h100-pcie' -> GpuSpec; anything unknown -> None."""
    if not name:
        return None
    n = name.lower()
    fam = next((f for f in _FAMILIES if re.search(rf"(?<![a-z0-9]){f.lower()}(?![0-9])", n)), None)
    if fam is None:
        return None
    if fam == "B200":
        return GPUS["B200"]
    form = "PCIe" if "pcie" in n else "NVL" if "nvl" in n else "SXM"
    return GPUS.get(f"{fam}-{form}")  # e.g. H800 PCIe is not in the table -> None


def current() -> GpuSpec | None:
    """The local accelerator's entry, None on CPU or an unknown GPU."""
    import torch

    return lookup(torch.cuda.get_device_name()) if torch.cuda.is_available() else None


def peak_flops(gpu: str | GpuSpec | None, dtype: str = "bf16") -> float | None:
    """Dense peak FLOP/s for 'bf16' or 'fp8'; None when unknown."""
    spec = lookup(gpu) if isinstance(gpu, str) or gpu is None else gpu
    return None if spec is None else getattr(spec, dtype)


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None, n_gpus: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over n_gpus × peak. None when the peak is unknown."""
    if not peak:
        return None
    return tokens_per_s * flops_per_token / (n_gpus * peak)

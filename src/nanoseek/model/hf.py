"""State-dict adapter and checkpoint I/O for Hugging Face DeepSeek-V3 directories.

One adapter serves loading, saving and the tests. Differences from our in-memory names:
- experts: on disk one tensor per expert (`mlp.experts.{j}.{gate,up,down}_proj.weight`); in memory
  stacked `mlp.experts.gate_up_proj (E, 2I, d)` / `down_proj (E, d, I)` (HF 5.x in-memory layout,
  also accepted on load);
- MTP module k is stored as layer `num_hidden_layers + k` (DeepSeek's layout, ARCHITECTURE.md §5),
  with `shared_head.norm` for our `shared_head_norm`, plus duplicated copies of the embedding and
  head (`embed_tokens`, `shared_head.head`) that we write on save and drop on load;
- FP8 checkpoints: `X.weight` (float8_e4m3fn) with `X.weight_scale_inv` (128×128 block scales,
  a multiplier despite the name) are dequantised on load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .rope import rope_inv_freq

_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
_MTP_OWN = ("enorm.", "hnorm.", "eh_proj.")


class CheckpointError(ValueError):
    """A checkpoint does not match the model: the message names the tensor."""


# ---------------------------------------------------------------------------- name mapping
def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig, mtp_duplicates: bool = True) -> dict[str, torch.Tensor]:
    """Our state dict -> HF on-disk names (per-expert tensors, MTP as layer L+k)."""
    L, out = cfg.num_hidden_layers, {}
    for name, t in sd.items():
        m = re.match(r"^mtp\.(\d+)\.(.*)$", name)
        if m:
            k, rest = int(m.group(1)), m.group(2)
            rest = rest[len("block."):] if rest.startswith("block.") else rest
            rest = "shared_head.norm." + rest[len("shared_head_norm."):] if rest.startswith("shared_head_norm.") else rest
            name = f"model.layers.{L + k}.{rest}"
        if name.endswith("mlp.experts.gate_up_proj"):
            base, I = name[: -len(".gate_up_proj")], t.shape[1] // 2
            for j in range(t.shape[0]):
                out[f"{base}.{j}.gate_proj.weight"] = t[j, :I]
                out[f"{base}.{j}.up_proj.weight"] = t[j, I:]
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len(".down_proj")]
            for j in range(t.shape[0]):
                out[f"{base}.{j}.down_proj.weight"] = t[j]
        else:
            out[name] = t
    if mtp_duplicates:
        for k in range(cfg.num_nextn_predict_layers):
            out[f"model.layers.{L + k}.embed_tokens.weight"] = sd["model.embed_tokens.weight"]
            out[f"model.layers.{L + k}.shared_head.head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state_dict(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF names (on-disk per-expert or in-memory stacked) -> our names. FP8 already dequantised."""
    L, out, experts = cfg.num_hidden_layers, {}, {}
    for name, t in hf.items():
        m = _LAYER.match(name)
        if m and int(m.group(1)) >= L:  # an MTP module
            k, rest = int(m.group(1)) - L, m.group(2)
            if rest in ("embed_tokens.weight", "shared_head.head.weight"):
                continue  # duplicated copies of the shared embedding / head
            if rest.startswith("shared_head.norm."):
                rest = "shared_head_norm." + rest[len("shared_head.norm."):]
            elif not rest.startswith(_MTP_OWN):
                rest = "block." + rest
            name = f"mtp.{k}.{rest}"
        e = _EXPERT.match(name)
        if e:
            experts.setdefault(e.group(1), {}).setdefault(e.group(3), {})[int(e.group(2))] = t
        else:
            out[name] = t
    for base, parts in experts.items():
        n = cfg.n_routed_experts
        for p in ("gate_proj", "up_proj", "down_proj"):
            missing = sorted(set(range(n)) - set(parts.get(p, {})))
            if missing:
                raise CheckpointError(f"missing tensor {base}.{missing[0]}.{p}.weight ({len(missing)} experts lack {p})")
        out[f"{base}.gate_up_proj"] = torch.stack([torch.cat([parts["gate_proj"][j], parts["up_proj"][j]]) for j in range(n)])
        out[f"{base}.down_proj"] = torch.stack([parts["down_proj"][j] for j in range(n)])
    return out


# ---------------------------------------------------------------------------- reading files
def _shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: malformed index ({e})") from e
        files = sorted({path / f for f in weight_map.values()})
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{index} names shard {f.name}, which does not exist")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json found")
    return files


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory, FP8 block-quantised weights dequantised (to bf16)."""
    path = Path(path)
    raw: dict[str, torch.Tensor] = {}
    for f in _shard_files(path):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    raw[k] = fh.get_tensor(k)
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise CheckpointError(f"{f}: cannot read safetensors file ({e})") from e
    return dequantize_fp8_state_dict(raw)


def dequantize_fp8_state_dict(raw: dict[str, torch.Tensor], dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    from ..fp8.quant import dequantize_weight  # DeepSeek's 128×128 block format lives with the FP8 code

    out = {}
    for k, t in raw.items():
        if k.endswith(".weight_scale_inv"):
            continue
        s = raw.get(k + "_scale_inv") if k.endswith(".weight") else None
        if t.dtype == torch.float8_e4m3fn:
            if s is None:
                raise CheckpointError(f"FP8 tensor {k} has no {k}_scale_inv")
            t = dequantize_weight(t, s, dtype)
        out[k] = t
    orphans = [k for k in raw if k.endswith(".weight_scale_inv") and k[: -len("_scale_inv")] not in raw]
    if orphans:
        raise CheckpointError(f"scale tensor {orphans[0]} has no weight")
    return out


# ---------------------------------------------------------------------------- load / save
def load_into(model, hf_sd: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Check names and shapes against `model`, then copy. Errors name the first offending tensor."""
    cfg = model.config
    sd = from_hf_state_dict(hf_sd, cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing and strict:
        raise CheckpointError(f"missing tensor {_hf_name(missing[0], cfg)} ({len(missing)} missing in all)")
    if unexpected and strict:
        raise CheckpointError(f"unexpected tensor {_hf_name(unexpected[0], cfg)} ({len(unexpected)} unexpected in all)")
    for k, t in sd.items():
        if k in expected and expected[k].shape != t.shape:
            raise CheckpointError(f"tensor {_hf_name(k, cfg)} has shape {tuple(t.shape)}, model expects {tuple(expected[k].shape)}")
    with torch.no_grad():
        for k, t in sd.items():
            if k in expected:
                expected[k].copy_(t)


def _hf_name(ours: str, cfg: ModelConfig) -> str:
    m = re.match(r"^mtp\.(\d+)\.(block\.)?(.*)$", ours)
    return f"model.layers.{cfg.num_hidden_layers + int(m.group(1))}.{m.group(3)}" if m else ours


def from_pretrained(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load an HF DeepSeek-V3 directory (config.json + safetensors shards, BF16/FP32 or FP8)."""
    from .transformer import DeepSeekV3

    path = Path(path)
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: no config.json (not a Hugging Face model directory)")
    hf_cfg = json.loads((path / "config.json").read_text())
    cfg = ModelConfig.from_hf(hf_cfg)
    tensors = read_safetensors(path)
    L, D = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
    if D and not any(k.startswith(f"model.layers.{L}.") for k in tensors):
        # transformers' save_pretrained drops the MTP layers; load the main model without them.
        warnings.warn(f"{path}: config has {D} MTP layer(s) but the checkpoint has no model.layers.{L}.*; loading without MTP")
        cfg = cfg.replace(num_nextn_predict_layers=0)
    if dtype is None:
        dtype = getattr(torch, str(hf_cfg.get("torch_dtype") or hf_cfg.get("dtype") or "float32").replace("torch.", ""), torch.float32)
    with torch.device("meta"):
        model = DeepSeekV3(cfg)
    model.to_empty(device=device)
    model.to(dtype)
    model.model.rotary.inv_freq = rope_inv_freq(cfg).to(device)  # non-persistent: not in the file
    load_into(model, tensors)
    return model


def fp8_eligible(name: str, t: torch.Tensor) -> bool:
    """DeepSeek's FP8 checkpoints quantize every attention / MLP / expert Linear weight; embeddings,
    lm_head, norms, the router and MTP's eh_proj / shared head stay BF16 (ARCHITECTURE.md §7)."""
    return (t.dim() == 2 and name.endswith("proj.weight") and ".eh_proj." not in name
            and name.startswith("model.layers."))


def quantize_state_dict_fp8(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """-> float8_e4m3fn weights + fp32 `weight_scale_inv` per 128×128 block (DeepSeek's format)."""
    from ..fp8.quant import quantize_weight_128x128

    out = {}
    for k, v in sd.items():
        if fp8_eligible(k, v):
            q, s = quantize_weight_128x128(v.float())
            out[k], out[k + "_scale_inv"] = q, s.float()
        else:
            out[k] = v
    return out


def save_pretrained(model, path: str | Path, max_shard_bytes: int = 5 * 2**30, dtype: torch.dtype | None = None,
                    mtp_duplicates: bool = True, fp8: bool = False) -> Path:
    """Write config.json + safetensors shards (+ index) atomically: a temp dir, then rename.

    fp8=True exports DeepSeek's FP8 checkpoint format (block-quantized weights + weight_scale_inv and
    a `quantization_config`), which `from_pretrained` dequantizes on load."""
    cfg, path = model.config, Path(path)
    sd = to_hf_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, cfg, mtp_duplicates)
    if dtype is not None or fp8:
        dt = dtype or torch.bfloat16
        sd = {k: (v if k.endswith("e_score_correction_bias") else v.to(dt)) for k, v in sd.items()}
    if fp8:
        sd = quantize_state_dict_fp8(sd)
    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v.clone(), size + nbytes  # safetensors refuses views sharing storage
    shards.append(cur)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        hf_cfg = cfg.to_hf()
        hf_cfg["torch_dtype"] = str(sd["lm_head.weight"].dtype).replace("torch.", "")
        if fp8:
            hf_cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                             "weight_block_size": [128, 128]}
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update({k: name for k in shard})
            total = sum(v.numel() * v.element_size() for v in sd.values())
            (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def replace_dir(tmp: Path, path: Path) -> None:
    """Atomically put directory `tmp` at `path` (an old `path` is moved aside, then deleted)."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

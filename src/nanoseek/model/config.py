"""ModelConfig: every DeepSeek-V3 architecture field, typed, grouped and validated.

Field names follow Hugging Face `DeepseekV3Config` so that `from_hf` / `to_hf` are a near
identity; the DeepSeek inference code's names ([M] `ModelArgs`) are given in the comments.
Presets live as JSON files in `nanoseek/presets/model/` (`tiny`, `small`, `16b`, `671b`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets" / "model"

# HF config keys that carry no architecture information for us (bookkeeping written by
# `transformers`, or legacy remote-code fields that HF itself ignores). Accepted and dropped.
_HF_IGNORED = {
    "architectures", "model_type", "auto_map", "transformers_version", "torch_dtype", "dtype",
    "use_cache", "pretraining_tp", "ep_size", "moe_layer_freq", "seq_aux", "aux_loss_alpha",
    "pad_token_id", "attention_dropout", "hidden_act", "num_key_value_heads", "head_dim",
    "rope_interleave", "quantization_config", "output_router_logits", "router_aux_loss_coef",
    "_name_or_path", "return_dict", "output_hidden_states", "output_attentions",
    "id2label", "label2id", "chunk_size_feed_forward", "is_encoder_decoder", "problem_type",
    "tie_encoder_decoder", "mlp_layer_types", "num_mtp_layers", "max_window_layers",
    "use_sliding_window", "sliding_window", "layer_types", "rope_scaling", "rope_parameters",
    "qk_head_dim", "is_decoder", "add_cross_attention", "tokenizer_class", "prefix", "sep_token_id",
    "decoder_start_token_id", "task_specific_params", "finetuning_task", "num_local_experts",
}


class ConfigError(ValueError):
    """A config key is unknown, mistyped or inconsistent; the message names it."""


@dataclass
class ModelConfig:
    # ---- sizes ----
    vocab_size: int = 129280
    hidden_size: int = 7168  # d ([M] dim)
    intermediate_size: int = 18432  # dense SwiGLU width of the first k layers ([M] inter_dim)
    num_hidden_layers: int = 61  # main layers, MTP modules excluded ([M] n_layers)
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 163840
    tie_word_embeddings: bool = False
    initializer_range: float = 0.006  # V3 report §4.2: std 0.006 for every parameter
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1

    # ---- attention: Multi-head Latent Attention (V2 report §2.1, V3 report §2.1.1) ----
    num_attention_heads: int = 128  # n_h
    q_lora_rank: int | None = 1536  # d_c'; None = direct q_proj (V2-Lite / 16B)
    kv_lora_rank: int = 512  # d_c, the cached latent
    qk_nope_head_dim: int = 128  # d_h
    qk_rope_head_dim: int = 64  # d_h^R, the decoupled rope key shared by all heads
    v_head_dim: int = 128  # d_v
    attention_bias: bool = False

    # ---- RoPE / YaRN (only the qk_rope_head_dim dims are rotated) ----
    rope_theta: float = 10000.0
    rope_type: str = "yarn"  # "default" (plain RoPE) or "yarn"
    rope_factor: float = 40.0  # s
    rope_original_max_position_embeddings: int = 4096  # L0 ([M] original_seq_len)
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_mscale: float = 1.0
    rope_mscale_all_dim: float = 1.0

    # ---- MoE: DeepSeekMoE with auxiliary-loss-free balancing (V3 report §2.1.2) ----
    n_routed_experts: int = 256  # N_r (0 = a dense model)
    n_shared_experts: int = 1  # N_s
    num_experts_per_tok: int = 8  # K_r
    moe_intermediate_size: int = 2048  # width of each routed / shared expert
    first_k_dense_replace: int = 3  # layers < k use the dense MLP
    n_group: int = 8  # expert groups (one per node in V3)
    topk_group: int = 4  # groups each token may use (M)
    scoring_func: str = "sigmoid"  # "sigmoid" (V3) or "softmax" (V2)
    topk_method: str = "noaux_tc"  # "noaux_tc" (V3: bias-corrected selection), "greedy" / "group_limited_greedy" (V2)
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5

    # ---- MTP (V3 report §2.2) ----
    num_nextn_predict_layers: int = 1  # D, the MTP depth

    # ------------------------------------------------------------------ derived
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0 and self.first_k_dense_replace < self.num_hidden_layers

    def is_moe_layer(self, i: int) -> bool:
        return self.n_routed_experts > 0 and i >= self.first_k_dense_replace

    @property
    def uses_yarn(self) -> bool:
        return self.rope_type == "yarn"

    @property
    def mscale(self) -> float:
        """YaRN softmax-scale correction m = 0.1·mscale_all_dim·ln(s) + 1 (squared in the scale)."""
        if not self.uses_yarn or self.rope_factor <= 1 or not self.rope_mscale_all_dim:
            return 1.0
        return 0.1 * self.rope_mscale_all_dim * math.log(self.rope_factor) + 1.0

    @property
    def rope_attention_factor(self) -> float:
        """Amplitude applied to cos/sin (HF `_compute_yarn_parameters`); 1.0 for V3 and V2-Lite."""
        if not self.uses_yarn:
            return 1.0
        def m(s: float, c: float = 1.0) -> float:
            return 1.0 if s <= 1 else 0.1 * c * math.log(s) + 1.0
        if self.rope_mscale and self.rope_mscale_all_dim:
            return m(self.rope_factor, self.rope_mscale) / m(self.rope_factor, self.rope_mscale_all_dim)
        return m(self.rope_factor)

    @property
    def softmax_scale(self) -> float:
        # (d_h + d_h^R)^-0.5 · mscale²  (V3: 192^-0.5 × 1.87385 = 0.135234)
        return self.qk_head_dim ** -0.5 * self.mscale ** 2

    # ------------------------------------------------------------------ checks
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            _check_type(f.name, v, f.type)

        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"ModelConfig.{name}: {msg} (got {getattr(self, name)!r})")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            need(getattr(self, name) > 0, name, "must be > 0")
        need(self.qk_rope_head_dim > 0 and self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim",
             "must be a positive even number (RoPE rotates pairs)")
        need(self.q_lora_rank is None or self.q_lora_rank > 0, "q_lora_rank", "must be None or > 0")
        need(self.rope_type in ("default", "yarn"), "rope_type", "must be 'default' or 'yarn'")
        need(self.scoring_func in ("sigmoid", "softmax"), "scoring_func", "must be 'sigmoid' or 'softmax'")
        need(self.topk_method in ("noaux_tc", "greedy", "group_limited_greedy"), "topk_method",
             "must be 'noaux_tc', 'greedy' or 'group_limited_greedy'")
        need(0 <= self.first_k_dense_replace <= self.num_hidden_layers, "first_k_dense_replace",
             "must be between 0 and num_hidden_layers")
        need(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers", "must be >= 0")
        need(self.n_routed_experts >= 0, "n_routed_experts", "must be >= 0")
        if self.n_routed_experts > 0:
            need(self.moe_intermediate_size > 0, "moe_intermediate_size", "must be > 0 for a MoE model")
            need(0 < self.num_experts_per_tok <= self.n_routed_experts, "num_experts_per_tok",
                 f"must be in 1..n_routed_experts={self.n_routed_experts}")
            need(self.n_group >= 1 and self.n_routed_experts % self.n_group == 0, "n_group",
                 f"must divide n_routed_experts={self.n_routed_experts}")
            need(1 <= self.topk_group <= self.n_group, "topk_group", f"must be in 1..n_group={self.n_group}")
            per_group = self.n_routed_experts // self.n_group
            need(self.topk_group * per_group >= self.num_experts_per_tok, "topk_group",
                 "topk_group × experts-per-group must be >= num_experts_per_tok")
            if self.topk_method == "noaux_tc" and self.n_group > 1:
                need(per_group >= 2, "n_group", "noaux_tc group scores need >= 2 experts per group")
        if self.first_k_dense_replace > 0:
            need(self.intermediate_size > 0, "intermediate_size", "must be > 0 when dense layers exist")
        if self.rope_type == "yarn":
            need(self.rope_factor >= 1.0, "rope_factor", "must be >= 1")
            need(self.rope_original_max_position_embeddings > 0, "rope_original_max_position_embeddings", "must be > 0")

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        path = PRESET_DIR / f"{name}.json"
        if not path.exists():
            avail = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
            raise ConfigError(f"unknown model preset {name!r}; available: {', '.join(avail)}")
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def load(cls, name_or_path: str | Path) -> "ModelConfig":
        """A preset name, a nanoseek JSON file, or an HF config.json (file or directory)."""
        p = Path(name_or_path)
        if p.is_dir():
            p = p / "config.json"
        if not p.exists():
            return cls.preset(str(name_or_path))
        d = json.loads(p.read_text())
        return cls.from_hf(d) if "model_type" in d or "rope_scaling" in d or "rope_parameters" in d else cls.from_dict(d)

    @classmethod
    def from_hf(cls, hf: dict[str, Any] | str | Path) -> "ModelConfig":
        """Build from an HF DeepSeek-V3 (or V2) config.json dict or path."""
        if not isinstance(hf, dict):
            p = Path(hf)
            hf = json.loads((p / "config.json" if p.is_dir() else p).read_text())
        hf = dict(hf)
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in hf if k not in known and k not in _HF_IGNORED)
        if unknown:
            raise ConfigError(f"unknown field(s) in HF config: {', '.join(unknown)}")
        kw = {k: v for k, v in hf.items() if k in known}
        if hf.get("qk_head_dim") not in (None, hf.get("qk_nope_head_dim", 128) + hf.get("qk_rope_head_dim", 64)):
            raise ConfigError("HF config qk_head_dim must equal qk_nope_head_dim + qk_rope_head_dim")
        if hf.get("num_key_value_heads") not in (None, hf.get("num_attention_heads")):
            raise ConfigError("HF config num_key_value_heads must equal num_attention_heads for MLA")
        if "num_mtp_layers" in hf and "num_nextn_predict_layers" not in hf:
            kw["num_nextn_predict_layers"] = hf["num_mtp_layers"]
        kw.setdefault("num_nextn_predict_layers", 0)
        # Fields whose HF default differs from the V3 default of this dataclass.
        kw["q_lora_rank"] = hf.get("q_lora_rank") or None
        kw["n_group"] = hf.get("n_group") or 1
        kw["topk_group"] = hf.get("topk_group") or 1
        kw["scoring_func"] = hf.get("scoring_func", "sigmoid")
        model_type = hf.get("model_type", "deepseek_v3")
        kw["topk_method"] = hf.get("topk_method", "noaux_tc" if model_type == "deepseek_v3" else "greedy")
        if model_type == "deepseek_v2" and "scoring_func" not in hf:
            kw["scoring_func"] = "softmax"
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        kw["rope_theta"] = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
        rtype = rope.get("rope_type", rope.get("type", "default"))
        if rtype not in ("default", "yarn"):
            raise ConfigError(f"HF config rope type {rtype!r} is not supported (only 'default' and 'yarn')")
        kw["rope_type"] = rtype
        if rtype == "yarn":
            kw["rope_factor"] = float(rope.get("factor", 1.0))
            kw["rope_original_max_position_embeddings"] = int(rope.get("original_max_position_embeddings", 4096))
            kw["rope_beta_fast"] = float(rope.get("beta_fast", 32.0))
            kw["rope_beta_slow"] = float(rope.get("beta_slow", 1.0))
            kw["rope_mscale"] = float(rope.get("mscale") or 0.0)  # 0 = unset (HF then uses 0.1 ln s + 1 for cos/sin)
            kw["rope_mscale_all_dim"] = float(rope.get("mscale_all_dim", 0.0) or 0.0)
        eos = kw.get("eos_token_id")
        if isinstance(eos, list):
            kw["eos_token_id"] = eos[0] if eos else None
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """An HF `DeepseekV3Config`-compatible config.json dict."""
        d = {k: v for k, v in self.to_dict().items() if not k.startswith("rope_")}
        rope: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.uses_yarn:
            rope.update(type="yarn", factor=self.rope_factor,
                        original_max_position_embeddings=self.rope_original_max_position_embeddings,
                        beta_fast=self.rope_beta_fast, beta_slow=self.rope_beta_slow,
                        mscale=self.rope_mscale, mscale_all_dim=self.rope_mscale_all_dim)
        d.update(
            architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
            num_key_value_heads=self.num_attention_heads, hidden_act="silu", head_dim=self.qk_rope_head_dim,
            rope_theta=self.rope_theta, rope_scaling=rope, rope_parameters=rope, rope_interleave=True,
            attention_dropout=0.0, use_cache=True, torch_dtype="bfloat16",
        )
        return d

    def replace(self, **kw: Any) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


def _check_type(name: str, value: Any, annot: Any) -> None:
    annot = str(annot)
    allowed = {
        "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
        "int | None": (int, type(None)),
    }.get(annot)
    if allowed is None:
        return
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and annot != "bool")
    if not ok:
        raise ConfigError(f"ModelConfig.{name}: expected {annot}, got {type(value).__name__} {value!r}")

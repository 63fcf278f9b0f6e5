"""HF checkpoint interop: save -> transformers load, sharding, MTP round trip, FP8 load, errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_util import hf_model, rel_err
from nanoseek import from_pretrained
from nanoseek.fp8.quant import dequantize_weight, quantize_weight_128x128
from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.model.hf import CheckpointError, load_into, read_safetensors

transformers = pytest.importorskip("transformers")
IDS = torch.randint(0, 128, (2, 33), generator=torch.Generator().manual_seed(7))


def ours_from_hf(**kw):
    hf = hf_model(**kw)
    m = DeepSeekV3(ModelConfig.from_hf(hf.config.to_dict())).eval()
    load_into(m, hf.state_dict(), strict=not m.mtp)  # HF's causal LM holds no MTP weights: ours stay random
    return hf, m


def test_save_then_transformers_loads_identical_logits(tmp_path):
    _, ours = ours_from_hf(num_nextn_predict_layers=1)
    ours.save_pretrained(tmp_path / "ckpt")
    hf2 = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "ckpt", attn_implementation="eager").eval()
    with torch.no_grad():
        assert rel_err(ours(IDS).logits, hf2(IDS).logits) < 1e-6


def test_transformers_directory_loads_with_identical_logits(tmp_path):
    hf, _ = ours_from_hf()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")  # several shards + index
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        assert rel_err(ours(IDS).logits, hf(IDS).logits) < 1e-6


def test_mtp_weights_round_trip_in_deepseek_layout(tmp_path):
    torch.manual_seed(0)
    m = DeepSeekV3(ModelConfig.preset("tiny"))
    with torch.no_grad():
        for moe in m.moe_layers():
            moe.gate.e_score_correction_bias.normal_(0, 0.05)
    m.save_pretrained(tmp_path / "c", max_shard_bytes=200_000)
    names = json.loads((tmp_path / "c" / "model.safetensors.index.json").read_text())["weight_map"]
    L = m.config.num_hidden_layers
    for k in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "embed_tokens.weight",
              "shared_head.head.weight", "self_attn.kv_b_proj.weight", "mlp.experts.7.down_proj.weight"):
        assert f"model.layers.{L}.{k}" in names
    m2 = from_pretrained(tmp_path / "c")
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert m2.moe_layers()[0].gate.e_score_correction_bias.dtype == torch.float32


def test_bf16_save_keeps_router_bias_fp32(tmp_path):
    m = DeepSeekV3(ModelConfig.preset("tiny")).to(torch.bfloat16)
    m.save_pretrained(tmp_path / "b")
    sd = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert sd["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    assert sd["model.layers.1.self_attn.q_b_proj.weight"].dtype == torch.bfloat16
    assert from_pretrained(tmp_path / "b").lm_head.weight.dtype == torch.bfloat16


def test_fp8_block_quantized_checkpoint_loads(tmp_path):
    """DeepSeek's FP8 format: float8_e4m3fn weights + weight_scale_inv per 128×128 block (a multiplier)."""
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").replace(hidden_size=192, q_lora_rank=160)  # edge blocks: 192 = 1.5 blocks
    m = DeepSeekV3(cfg)
    m.save_pretrained(tmp_path / "f", mtp_duplicates=False)
    sd = load_file(str(tmp_path / "f" / "model.safetensors"))
    quantized, expect = {}, {}
    for k, v in sd.items():
        if k.endswith("proj.weight") and "eh_proj" not in k and v.dim() == 2:
            q, s = quantize_weight_128x128(v)
            assert q.dtype == torch.float8_e4m3fn and s.shape == (-(-v.shape[0] // 128), -(-v.shape[1] // 128))
            quantized[k], quantized[k + "_scale_inv"] = q, s
            # the multiplier convention, by hand for block (0, 0)
            torch.testing.assert_close(dequantize_weight(q, s, torch.float32)[:128, :128], q[:128, :128].float() * s[0, 0])
            expect[k] = dequantize_weight(q, s, torch.float32)
        else:
            quantized[k] = v
    save_file(quantized, str(tmp_path / "f" / "model.safetensors"))
    m8 = from_pretrained(tmp_path / "f", dtype=torch.float32)
    got = read_safetensors(tmp_path / "f")
    n = 0
    for k, v in expect.items():
        torch.testing.assert_close(got[k].float(), v, rtol=1e-2, atol=1e-6)  # bf16 dequant output
        n += 1
    assert n > 20
    ids = torch.randint(0, cfg.vocab_size, (1, 16))
    with torch.no_grad():
        assert rel_err(m8(ids).logits, m(ids).logits) < 0.1  # FP8 weights: close, not identical


@pytest.mark.parametrize("mutate,msg", [
    (lambda sd: sd.pop("model.layers.0.self_attn.kv_b_proj.weight"), "missing tensor model.layers.0.self_attn.kv_b_proj.weight"),
    (lambda sd: sd.__setitem__("model.layers.0.extra.weight", torch.zeros(2)), "unexpected tensor model.layers.0.extra.weight"),
    (lambda sd: sd.__setitem__("model.norm.weight", torch.zeros(7)), "model.norm.weight has shape"),
    (lambda sd: sd.pop("model.layers.2.mlp.experts.3.up_proj.weight"), "model.layers.2.mlp.experts.3.up_proj.weight"),
    (lambda sd: sd.pop("model.layers.1.mlp.gate.e_score_correction_bias"), "e_score_correction_bias"),
])
def test_mismatched_checkpoints_fail_naming_the_tensor(tmp_path, mutate, msg):
    hf, _ = ours_from_hf()
    hf.save_pretrained(tmp_path / "x")
    sd = load_file(str(tmp_path / "x" / "model.safetensors"))
    mutate(sd)
    save_file(sd, str(tmp_path / "x" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=msg.replace(".", r"\.")):
        from_pretrained(tmp_path / "x")


def test_corrupt_and_incomplete_directories(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(ModelConfig.preset("tiny").to_hf()))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        from_pretrained(tmp_path)


def test_save_is_atomic_and_replaces(tmp_path):
    m = DeepSeekV3(ModelConfig.preset("tiny"))
    out = tmp_path / "ck"
    m.save_pretrained(out)
    m.save_pretrained(out)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp or old dirs left


def test_fp8_export_round_trip(tmp_path):
    torch.manual_seed(0)
    m = DeepSeekV3(ModelConfig.preset("tiny"))
    m.save_pretrained(tmp_path / "e", fp8=True)
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    assert cfg["quantization_config"]["weight_block_size"] == [128, 128]
    sd = load_file(str(tmp_path / "e" / "model.safetensors"))
    assert sd["model.layers.0.self_attn.kv_b_proj.weight"].dtype == torch.float8_e4m3fn
    assert sd["model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv"].dtype == torch.float32
    assert sd["model.layers.1.mlp.gate.weight"].dtype == torch.bfloat16  # router stays high precision
    assert sd["lm_head.weight"].dtype == torch.bfloat16
    m2 = from_pretrained(tmp_path / "e", dtype=torch.float32)
    ids = torch.randint(0, 2048, (1, 16))
    with torch.no_grad():
        assert rel_err(m2(ids).logits, m(ids).logits) < 0.1

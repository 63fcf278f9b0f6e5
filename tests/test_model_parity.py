"""Numerical parity with transformers' DeepseekV3ForCausalLM on tiny random configs (fp32, CPU)."""

import pytest
import torch

from hf_util import VARIANTS, hf_model, rel_err
from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.model.hf import load_into

pytest.importorskip("transformers")


def ours_from(hf):
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    m = DeepSeekV3(cfg).eval()
    load_into(m, hf.state_dict())
    return m


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("attn,experts", [("sdpa", "grouped"), ("eager", "loop")])
def test_logits_match_transformers(variant, attn, experts):
    hf = hf_model(**VARIANTS[variant])
    ours = ours_from(hf).set_impl(attn, experts)
    ids = torch.randint(0, hf.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids).logits
    assert rel_err(got, ref) < 1e-5


def test_negative_control_bias_matters():
    """The parity test can fail: ignoring the router bias changes the logits."""
    hf = hf_model()
    ours = ours_from(hf)
    for m in ours.moe_layers():
        m.gate.e_score_correction_bias.zero_()
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel_err(ours(ids).logits, hf(ids).logits) > 1e-3


def test_negative_control_mscale_matters():
    hf = hf_model()
    ours = ours_from(hf)
    for layer in ours.model.layers:
        layer.self_attn.scale = ours.config.qk_head_dim ** -0.5  # drop mscale²
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel_err(ours(ids).logits, hf(ids).logits) > 1e-2


def test_mtp_matches_transformers_mtp_model():
    from transformers.modeling_layers import MtpModel

    hf = hf_model(num_nextn_predict_layers=1)
    mtp = MtpModel(hf, 1).eval()
    with torch.no_grad():
        for name, p in mtp.named_parameters():  # init every MTP weight: some are left uninitialised
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() >= 2 and "embed_tokens" not in name and "shared_head" not in name:
                p.normal_(0, 0.1)
        for name, b in mtp.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b))
    sd = dict(hf.state_dict())
    L = hf.config.num_hidden_layers
    for k, v in mtp.state_dict().items():  # HF names: layers.0.{mtp_block.X, enorm, hnorm, eh_proj, post_norm}
        if not k.startswith("layers.0."):
            continue  # embed_tokens / shared_head: tied to the main model
        rest = k[len("layers.0."):].replace("mtp_block.", "").replace("post_norm.", "shared_head.norm.")
        sd[f"model.layers.{L}.{rest}"] = v
    ours = DeepSeekV3(ModelConfig.from_hf(hf.config.to_dict())).eval()
    load_into(ours, sd)
    S = 24
    ids = torch.randint(0, 128, (2, S), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        h = hf(ids, output_hidden_states=True).hidden_states[-1]
        y = mtp.forward_layer(0, h[:, :-1], position_ids=torch.arange(S - 1)[None], mtp_cache=None, input_ids=ids[:, 1:])
        ref = mtp._project_to_logits(y)
        out = ours(ids, mtp=True)
        got = ours.lm_head(out.mtp_hidden[0])
    assert (got - ref).abs().max().item() < 1e-5 * ref.abs().max().item() + 1e-6

"""Document-masked attention on GPU with FlexAttention (packed sequences, no cross-document attention).

The dense (B,1,S,S) boolean mask pushes SDPA off its flash kernels and costs O(S²) memory;
a FlexAttention BlockMask skips whole 128×128 tiles that lie outside every document's causal
block, so packed training pays only for the attention it uses.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _flex():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return torch.compile(flex_attention, dynamic=False), create_block_mask


def flex_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        _flex()
        return True
    except Exception:  # older torch without flex_attention
        return False


def document_block_mask(doc_ids: torch.Tensor):
    """doc_ids (B,S) -> BlockMask: causal and within the same document."""
    _, create_block_mask = _flex()
    B, S = doc_ids.shape

    def mask_mod(b, h, q, kv):
        return (q >= kv) & (doc_ids[b, q] == doc_ids[b, kv])

    return create_block_mask(mask_mod, B, None, S, S, device=doc_ids.device)


def flex_attention(q, k, v, block_mask, scale):
    """q,k (B,H,S,Dqk), v (B,H,S,Dv) -> (B,H,S,Dv)."""
    fn, _ = _flex()
    return fn(q, k, v, block_mask=block_mask, scale=scale)

"""nanoseek: the DeepSeek-V3 / R1 low-cost training recipe, end to end."""

from .model import ConfigError, DeepSeekV3, ModelConfig, ModelOutput

__version__ = "0.1.0"


def from_pretrained(path, dtype=None, device="cpu") -> DeepSeekV3:
    """Load a Hugging Face DeepSeek-V3 directory (BF16/FP32 or DeepSeek FP8) as a nanoseek model."""
    return DeepSeekV3.from_pretrained(path, dtype=dtype, device=device)


__all__ = ["ConfigError", "DeepSeekV3", "ModelConfig", "ModelOutput", "from_pretrained"]

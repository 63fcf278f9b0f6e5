"""The DeepSeek-V3 model: one file per component."""

from .config import ConfigError, ModelConfig
from .loss import load_imbalance, model_loss, update_router_bias
from .transformer import DeepSeekV3, ModelOutput

__all__ = ["ConfigError", "ModelConfig", "DeepSeekV3", "ModelOutput", "model_loss", "update_router_bias", "load_imbalance"]

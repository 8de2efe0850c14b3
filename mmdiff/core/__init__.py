"""The shared masked-diffusion transformer core."""

from mmdiff.core.config import CoreConfig
from mmdiff.core.masks import ATTENTION_KINDS, block_causal_mask, build_attention_mask, key_padding_mask, prefix_mask
from mmdiff.core.model import CoreOutput, KVCache, MaskedDiffusionTransformer, RMSNorm

__all__ = [
    "CoreConfig",
    "CoreOutput",
    "KVCache",
    "MaskedDiffusionTransformer",
    "RMSNorm",
    "ATTENTION_KINDS",
    "build_attention_mask",
    "block_causal_mask",
    "key_padding_mask",
    "prefix_mask",
]

"""Attention modules."""
from .context_attention import ContextAttention, KVCache

__all__ = ["ContextAttention", "KVCache"]

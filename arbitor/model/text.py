"""The ARB text model: a small GPT whose every weight is ternary.

    idx [B, T] --SparseTernaryEmbedding--> x [B, T, D]
    for each Block:
        x = x + ContextAttention(norm(x))        # causal MHA, ternary Q/K/V/O + ternary gate
        x = x + LTIInjection(norm(x))            # fixed-decay EMA bank, ternary readout
        x = x + MLP(norm(x))                     # ternary up/down, squared ReLU
    logits = TextDecoder(x)                      # RMSNorm + ternary head

Projections come from ``cfg.linear`` (``layers.LINEAR_FACTORIES``); with the default
``"ternary"`` the model has zero trainable float parameters (``ternary_audit``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ternary.embedding import SparseTernaryEmbedding
from ..ternary.step import expect_ballots
from .attention import ContextAttention, KVCache
from .config import ModelConfig
from .decoders import DECODERS
from .decode import generate_static, sample_next
from .layers import MLP, LTIInjection, RMSNorm, residual_dropout

__all__ = ["Block", "ArbitorLM"]


class Block(nn.Module):
    """One pre-norm transformer block with LTI injection. ``[B, T, D] -> [B, T, D]``.

    ``cfg.dropout > 0``: in a training-mode forward without a cache the attention drops its probabilities and
    its output (``ContextAttention``) and the MLP branch is dropped here (nanoGPT's places; the LTI branch has
    no nanoGPT counterpart and keeps none).
    """

    def __init__(self, cfg: ModelConfig, seed: int) -> None:
        super().__init__()
        self.norm = RMSNorm()
        self.attn = ContextAttention(cfg, seed)
        self.lti = LTIInjection(cfg, seed + 10) if cfg.lti_decays else None
        self.mlp = MLP(cfg, seed + 20)
        self.dropout = float(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm(x), cache, layer)
        if self.lti is not None:
            state = cache.get_lti(layer) if cache is not None else None
            out, new_state = self.lti(self.norm(x), state)
            if cache is not None:
                cache.set_lti(layer, new_state)
            x = x + out
        return x + residual_dropout(self.mlp(self.norm(x)), self.dropout, self.training and cache is None)


class ArbitorLM(nn.Module):
    """Token ids ``[B, T]`` -> next-token logits ``[B, T, vocab_size]``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        s = cfg.seed * 1000
        t = cfg.ternary
        self.embed = SparseTernaryEmbedding(cfg.vocab_size, cfg.d_model, cfg.embedding_group_size,
                                            update_rule=cfg.embedding_update_rule, zero_fraction=t.zero_fraction,
                                            strength=t.strength, ballot_prior=t.ballot_prior, seed=s)
        self.blocks = nn.ModuleList(Block(cfg, s + 100 * (i + 1)) for i in range(cfg.n_layers))
        self.decoders = nn.ModuleDict({name: DECODERS[name](cfg, s + 99 + 7 * i)
                                       for i, name in enumerate(cfg.decoders)})
        # a dense (``nn.Linear``) projection holds its weight in the activation dtype: ``hidden`` casts the
        # activations to ``compute_dtype`` and a float32 weight would not multiply a bf16 / fp16 input (the
        # ternary layers hold no float weights and take any activation dtype)
        dtype = getattr(torch, cfg.compute_dtype)
        for mod in self.modules():
            if type(mod) is nn.Linear:
                mod.to(dtype)

    def hidden(self, idx: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        """``idx [B, T]`` -> final hidden states ``[B, T, D]``."""
        past = cache.length if cache is not None else 0
        if past + idx.shape[1] > self.cfg.max_ctx:
            raise ValueError(f"sequence of {past + idx.shape[1]} tokens exceeds max_ctx={self.cfg.max_ctx}")
        x = self.embed(idx).to(getattr(torch, self.cfg.compute_dtype))
        if cache is None:   # nanoGPT's dropout of the embedding output (training mode, cfg.dropout > 0 only)
            x = residual_dropout(x, self.cfg.dropout, self.training)
        recompute = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        # the first ``recompute_blocks`` blocks recompute (config.py: the last ones keep their activations)
        n_recompute = len(self.blocks) if self.cfg.recompute_blocks is None else self.cfg.recompute_blocks
        for i, block in enumerate(self.blocks):
            # checkpointing keeps only each block's input; its inside is recomputed in backward (the
            # recomputed forward reads the same integer state: a layer's own votes land after it). Without
            # dropout the recompute needs no saved RNG state, which also keeps the step graph-capturable; with
            # dropout the RNG state is saved and restored so the recompute draws the same masks
            if recompute and i < n_recompute:
                expect_ballots(block)   # the dirty flags set here, not inside the checkpoint: it compiles whole
                x = checkpoint(block, x, None, i, use_reentrant=False, preserve_rng_state=self.cfg.dropout > 0)
            else:
                x = block(x, cache, i)
        if cache is not None:
            cache.advance(idx.shape[1])
        return x

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """Returns ``(logits [B, T, V], loss or None)`` (loss: mean nats/token of the text decoder).

        With ``targets`` and ``cfg.loss_chunk_tokens > 0`` the logits are not materialised (``None``).
        """
        h = self.hidden(idx)
        text = self.decoders["text"]
        if targets is None:
            return text(h), None
        # with a chunked loss the full logits are never built (the point of chunking): logits = None
        logits = None if self.cfg.loss_chunk_tokens else text(h)
        return logits, text.loss(h, targets)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 cuda_graph: bool = False) -> torch.Tensor:
        """Sample ``max_new_tokens`` after ``idx [B, T0]`` with a KV cache; returns ``[B, T0 + new]``.

        ``temperature == 0`` picks the most likely token (greedy). While ``T0 + max_new_tokens`` fits in
        ``max_ctx``, every token runs one step over a preallocated ``StaticKVCache`` (``decode.py``): eagerly, or,
        with ``cuda_graph=True`` (CUDA only), captured once as a CUDA graph and replayed (no per-layer Python /
        launch overhead). Both run the same kernels on the same shapes, so they give the same tokens bit for bit.
        Longer runs take ``generate_dynamic``, whose cache grows and is rebuilt from the last ``max_ctx // 2``
        tokens when it would pass ``max_ctx``.
        """
        if idx.shape[1] + max_new_tokens <= self.cfg.max_ctx:
            return generate_static(self, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                   generator=generator, cuda_graph=cuda_graph)
        return self.generate_dynamic(idx, max_new_tokens, temperature, top_k, generator)

    @torch.no_grad()
    def generate_dynamic(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                         top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``generate`` with a growing ``KVCache`` (any length; rebuilt from the last ``max_ctx // 2`` tokens when
        it would pass ``max_ctx``). Same tokens as the static cache in float32; in 16-bit activations the shorter
        attention may round differently, which can flip a near-tie."""
        was_training = self.training
        self.eval()
        try:
            cache = KVCache()
            h = self.hidden(idx[:, -self.cfg.max_ctx:], cache)
            out = idx
            for _ in range(max_new_tokens):
                nxt = sample_next(self.decoders["text"](h[:, -1]).float(), temperature, top_k, generator)
                out = torch.cat([out, nxt], dim=1)
                if cache.length + 1 > self.cfg.max_ctx:
                    cache = KVCache()
                    h = self.hidden(out[:, -(self.cfg.max_ctx // 2):], cache)
                else:
                    h = self.hidden(nxt, cache)
            return out
        finally:
            self.train(was_training)

"""``ContextAttention``: causal multi-head attention with ternary projections and a ternary gate.

    q, k, v = x W_q, x W_k, x W_v                 (split into heads)
    a       = SDPA(q, k, v, causal)              (torch.nn.functional.scaled_dot_product_attention)
    out     = sigmoid(x W_g) * (a W_o)

With ``cfg.dropout = p > 0`` a training-mode forward without a cache drops attention probabilities
(SDPA's ``dropout_p``) and the branch output ``out`` (nanoGPT's ``attn_dropout`` / ``resid_dropout``); a
cached (decoding) forward never does.

All five projections (``W_q, W_k, W_v, W_o, W_g``) come from the config's linear factory --
``TernaryScaleTensor`` by default -- so the block has no float parameters.

KV cache: ``forward(x, cache)`` appends this call's keys/values to ``cache`` (a ``KVCache``) and
attends over everything cached so far; a query at absolute position ``p`` sees keys ``<= p``.
``StaticKVCache`` is the preallocated form (fixed shapes, the position held on the device) that a CUDA graph
of one decode step can replay (``decode.py``): keys/values are written in place at the current position and
every query attends over the whole buffer under the mask ``key position <= query position``.

Decoding (any call with a cache) runs SDPA on backends whose forward is deterministic run to run
(``DECODE_SDPA_BACKENDS``: flash, memory-efficient, math). cuDNN's attention, which PyTorch picks first on
the H200 for the masked decode step, is not: two eager calls of the ``3b`` preset's batch-16 token step on
identical inputs differed in the attention output of one layer in 22 (by up to 4e-3), so graphed and eager
greedy tokens parted after four or five tokens (``docs/inference.md``). Training
(no cache) keeps PyTorch's own choice, cuDNN's fused kernels on Hopper. A single-query step on CUDA (the token
step) skips SDPA (``_one_query_attention``): the fused flash-decoding kernel of ``decode_attention.py`` (one
pass over K and V, splits combined in a fixed order) when Triton imports, else two cuBLAS ``bmm`` s and a
float32 softmax.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..ternary.sibling import sibling_forward, stackable
from .layers import make_linear, residual_dropout

__all__ = ["ContextAttention", "KVCache", "StaticKVCache", "DECODE_SDPA_BACKENDS", "cached_attention"]

#: SDPA backends of a cached (decoding) call: those whose forward is deterministic run to run (not cuDNN's)
DECODE_SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The attention of a decoding call, deterministic run to run: ``q [B, H, T, hd]`` over ``k, v [B, H, L, hd]``,
    causal when ``mask`` is ``None``, else under the bool ``mask [T, L]`` (True: may attend). One masked query
    in 16 bits on CUDA (a token step): ``_one_query_attention`` (the fused Triton kernel, or cuBLAS); otherwise
    SDPA on ``DECODE_SDPA_BACKENDS``."""
    if mask is not None and _token_step_on_cuda(q):
        return _one_query_attention(q, k, v, mask)
    with sdpa_kernel(list(DECODE_SDPA_BACKENDS)):
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _token_step_on_cuda(q: torch.Tensor) -> bool:
    """Whether ``q [B, H, T, hd]`` is one query in 16 bits on CUDA: a token step, which the fused one-query kernels
    (``decode_attention``) serve."""
    return q.shape[2] == 1 and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


@lru_cache(maxsize=None)
def _decode_attention():
    """``decode_attention`` (the fused one-query kernel), or ``None`` when Triton cannot be imported. Imported on
    the first token step, not with this module: importing Triton costs time that prefill-only and CPU users
    need not pay."""
    try:
        from . import decode_attention
    except ImportError:     # pragma: no cover - depends on the installation
        return None
    return decode_attention


def _one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A decode step's attention (one query, 16-bit; called on CUDA): ``q [B, H, 1, hd]`` over ``k, v [B, H, L,
    hd]`` under the bool ``mask [1, L]``.

    With Triton, the op ``arbitor::one_query_attention`` (``decode_attention.py``): one launch reads K and V once,
    split along L across the GPU, each head's last program combining the splits in a fixed order --
    deterministic, opaque to ``torch.compile`` and captured by CUDA graphs; float32 probabilities. Inputs it
    does not take (a head width that is not a power of two in [16, 256], a mask of another shape:
    ``decode_attention.check_inputs``) and an installation without Triton take the fallback, ``_one_query_bmm``:
    scores by a cuBLAS ``bmm`` with float32 output, scaled, masked and soft-maxed in float32, the probabilities
    rounded to q's type for ``@ v`` (as the fused SDPA kernels do). Also deterministic; it costs two ``bmm`` s and
    a softmax kernel a layer. SDPA is no option here: the memory-efficient kernel, the deterministic SDPA backend
    that takes a mask, tiles 64 queries and took 28 us a call in the ``3b`` batch-1 token step on the H200
    (cuDNN's: 7.5 us, not deterministic; ``docs/inference.md``)."""
    fused = _decode_attention()
    if fused is not None and fused.check_inputs(q, k, v, mask) is None:
        return fused.one_query_attention_op(q, k, v, mask)
    return _one_query_bmm(q, k, v, mask)


def _fused_append(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, pos: torch.Tensor):
    """``decode_attention`` when ``StaticKVCache.attend`` can write and attend in one launch (a token step on CUDA,
    ``_token_step_on_cuda``, with inputs ``check_append_inputs`` takes), else ``None``."""
    if not _token_step_on_cuda(q):
        return None
    fused = _decode_attention()
    if fused is None or fused.check_append_inputs(q, k_new, v_new, k_cache, v_cache, pos) is not None:
        return None
    return fused


def _one_query_bmm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``_one_query_attention``'s fallback: two cuBLAS ``bmm`` s around a float32 softmax (CUDA only: the scores'
    ``bmm`` with ``out_dtype`` has no CPU kernel)."""
    B, H, _, hd = q.shape
    L = k.shape[2]
    s = torch.bmm(q.reshape(B * H, 1, hd), k.reshape(B * H, L, hd).transpose(1, 2), out_dtype=torch.float32)
    s = torch.where(mask, s.view(B, H, 1, L) * hd ** -0.5, float("-inf"))
    p = torch.softmax(s, dim=-1).to(v.dtype)
    return torch.bmm(p.view(B * H, 1, L), v.reshape(B * H, L, hd)).view(B, H, 1, hd)


@dataclass
class KVCache:
    """Per-layer cached keys/values ``[B, H, T_cached, head_dim]`` (and the LTI states, see text.py)."""

    k: list = field(default_factory=list)
    v: list = field(default_factory=list)
    lti: list = field(default_factory=list)

    @property
    def length(self) -> int:
        return 0 if not self.k or self.k[0] is None else int(self.k[0].shape[2])

    def get_lti(self, layer: int) -> Optional[torch.Tensor]:
        """The LTI state of ``layer`` carried from the previous call (``None`` before the first)."""
        return self.lti[layer] if len(self.lti) > layer else None

    def set_lti(self, layer: int, state: torch.Tensor) -> None:
        self.lti[layer:layer + 1] = [state]

    def advance(self, n: int) -> None:
        """Called after all layers have seen ``n`` new positions (the length is the cached keys' own)."""


class StaticKVCache:
    """Preallocated keys/values ``[B, H, max_len, head_dim]`` per layer, LTI states ``[B, n, D]`` and the
    position as a device tensor: one decode step has fixed shapes and no host state, so it can be captured
    as a CUDA graph and replayed (``decode.GraphedDecoder``). Works eagerly on any device too.

    ``length`` is a host mirror of the position for eager calls (a replayed graph advances only ``pos``;
    ``decode.py`` keeps the mirror up to date). ``reset()`` starts a new sequence with the same buffers.
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, max_len: int, dtype: torch.dtype,
                 device, lti: Optional[tuple[int, int]] = None) -> None:
        def z(*shape):
            return torch.zeros(*shape, dtype=dtype, device=device)
        self.k = [z(batch, n_heads, max_len, head_dim) for _ in range(n_layers)]
        self.v = [z(batch, n_heads, max_len, head_dim) for _ in range(n_layers)]
        self.lti = [z(batch, *lti) for _ in range(n_layers)] if lti is not None else []
        self.pos = torch.zeros((), dtype=torch.int64, device=device)
        self.key_pos = torch.arange(max_len, device=device).view(1, -1)
        self.max_len = max_len
        self.batch = batch
        self.length = 0
        self._started = False    # host: whether the LTI states hold a carried state yet

    def reset(self) -> None:
        self.pos.zero_()
        self.length = 0
        self._started = False

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write ``k, v [B, H, T, hd]`` at positions ``pos .. pos+T``; returns the whole buffers and the bool
        mask ``[T, max_len]`` (query ``pos+i`` sees keys ``<= pos+i``)."""
        qpos = self.pos + torch.arange(k.shape[2], device=k.device)
        self.k[layer].index_copy_(2, qpos, k.to(self.k[layer].dtype))
        self.v[layer].index_copy_(2, qpos, v.to(self.v[layer].dtype))
        return self.k[layer], self.v[layer], self.key_pos <= qpos.view(-1, 1)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """A step after the prompt: writes ``k, v [B, H, T, hd]`` at ``pos ..`` (``update``) and returns ``q [B, H,
        T, hd]``'s attention over the buffer under ``update``'s mask (``cached_attention``). A token step in 16 bits
        on CUDA does both in one launch (``decode_attention.one_query_attention_append``: the write and the
        attention of ``_one_query_attention`` bit for bit, without the cache-write kernel between the projection
        and the attention) when the fused kernel takes the inputs (``_fused_append``). The caches and the position
        are written only by the attention itself and by ``advance`` after the last layer, never by the projection
        launched just before: the launch may read them before it waits for that projection (``cache_settled``)."""
        fused = _fused_append(q, k, v, self.k[layer], self.v[layer], self.pos)
        if fused is not None:
            return fused.one_query_attention_append_op(q, k, v, self.k[layer], self.v[layer], self.pos,
                                                       cache_settled=True)
        kk, vv, mask = self.update(layer, k, v)
        return cached_attention(q, kk, vv, mask)

    def get_lti(self, layer: int) -> Optional[torch.Tensor]:
        return self.lti[layer] if self._started and len(self.lti) > layer else None

    def set_lti(self, layer: int, state: torch.Tensor) -> None:
        self.lti[layer].copy_(state)

    def advance(self, n: int) -> None:
        self.pos.add_(n)
        self.length += n
        self._started = True

    def position(self) -> tuple:
        """The position and what depends on it (device ``pos``, copies of the LTI states, the host mirrors), for
        ``set_position``: a step run and undone (``decode.GraphedDecoder``'s dry step before a capture). The keys /
        values a step writes at ``pos`` need no copy: the next step there overwrites them before reading."""
        return self.pos.clone(), [t.clone() for t in self.lti], self.length, self._started

    def set_position(self, saved: tuple) -> None:
        """Back to a ``position()``."""
        pos, lti, self.length, self._started = saved
        self.pos.copy_(pos)
        for t, kept in zip(self.lti, lti):
            t.copy_(kept)


class ContextAttention(nn.Module):
    """Causal MHA. ``x [B, T, D]`` -> ``[B, T, D]``; with ``cache`` and ``layer`` index: cached decoding."""

    # q, k, v and gate all read x: a frozen model may hold them as one projection ``qkvg`` of 4 * d_model outputs
    # (``for_inference(model, fuse_projections=True)``), which ``_project`` splits
    FUSABLE_PROJECTIONS = (("qkvg", ("q", "k", "v", "gate")),)

    def __init__(self, cfg, seed: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.head_dim = d // cfg.n_heads
        self.q = make_linear(cfg, d, d, seed)
        self.k = make_linear(cfg, d, d, seed + 1)
        self.v = make_linear(cfg, d, d, seed + 2)
        self.o = make_linear(cfg, d, d, seed + 3)
        self.gate = make_linear(cfg, d, d, seed + 4)
        self.qkvg: Optional[nn.Module] = None
        self.dropout = float(getattr(cfg, "dropout", 0.0))

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(q, k, v, gate logits)``, each ``[B, T, D]``: four projections, or one fused ``qkvg`` split in four."""
        if self.qkvg is not None:
            return tuple(self.qkvg(x).split(x.shape[-1], dim=-1))
        projections = (self.q, self.k, self.v, self.gate)
        if stackable(projections):    # ternary layers: one expansion and one GEMM for the four (ternary/sibling.py)
            return tuple(sibling_forward(projections, x).split(x.shape[-1], dim=-1))
        return tuple(p(x) for p in projections)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)   # [B, H, T, hd]

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v, g = self._project(x)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        past = 0
        if isinstance(cache, StaticKVCache):
            # the prompt (nothing cached yet) attends exactly as without a cache; later steps over the buffer
            if cache.length == 0:
                cache.update(layer, k, v)
                a = cached_attention(q, k, v)
            else:
                a = cache.attend(layer, q, k, v)
            return torch.sigmoid(g) * self.o(a.transpose(1, 2).reshape(B, T, D))
        if cache is not None:
            while len(cache.k) <= layer:
                cache.k.append(None)
                cache.v.append(None)
            if cache.k[layer] is not None:
                past = cache.k[layer].shape[2]
                k = torch.cat([cache.k[layer], k], dim=2)
                v = torch.cat([cache.v[layer], v], dim=2)
            cache.k[layer], cache.v[layer] = k.detach(), v.detach()
        p = self.dropout if cache is None and self.training else 0.0    # only the training path drops
        if cache is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        elif past == 0:
            a = cached_attention(q, k, v)
        else:
            # query i (absolute position past+i) may see keys j <= past+i
            qpos = torch.arange(past, past + T, device=x.device).view(-1, 1)
            kpos = torch.arange(past + T, device=x.device).view(1, -1)
            a = cached_attention(q, k, v, kpos <= qpos)
        a = a.transpose(1, 2).reshape(B, T, D)
        return residual_dropout(torch.sigmoid(g) * self.o(a), p, self.training)

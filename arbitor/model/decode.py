"""Decoding without per-layer Python overhead: a static KV cache and one token step as a CUDA graph.

``ArbitorLM.generate`` runs every layer of every token step from Python (a custom op, checks and a Triton
launch per projection): on a GPU a decode step of a small batch is launch-bound. ``GraphedDecoder`` instead

1. preallocates a ``StaticKVCache`` (keys/values ``[B, H, max_len, hd]`` per layer, the LTI states, the
   position as a device tensor) and runs the prompt eagerly through it (the prefill: same math as
   ``generate``'s, attention with ``is_causal`` over the prompt);
2. runs the first token step eagerly (it also compiles / warms the kernels), then captures the next one --
   ``hidden(tok, cache)`` + the text head, ``tok [B, 1]`` a static input -- as a ``torch.cuda.CUDAGraph``;
3. replays that graph for every further token: each replay writes the step's keys/values at ``pos``,
   attends over the whole buffer under the mask ``key position <= query position`` and advances ``pos`` on
   the device. Sampling (``sample_next``, the function the eager path uses too) runs outside the graph.

``compile=True`` also ``torch.compile`` s the token step before it is captured (Inductor fuses the norms,
gates, attention glue and residual adds between the projections; the graph then replays the fused kernels):
the first two steps take the compile time. It compiles with Inductor's ``emulate_precision_casts``
(``COMPILE_OPTIONS``): a fused kernel then rounds each bf16 intermediate as the eager ops do. Without it the
``3b`` step's logits moved by up to 0.03 from the eager step's (on a logit scale of 1.5), and greedy tokens of
a randomly drawn model, whose top two logits were 0.016-0.09 apart, left the eager path's after 4 of 9 tokens
(``benchmarks/results/inference/h200-decode-compiled-vs-eager/``). It also sets ``combo_kernels``: Inductor
launches independent kernels of the step (the key and value cache writes, say) as one, which took the ``3b``
step at batch 1 from 744-748 to 764-767 tokens/s on the H200 in two runs (dense: 392-402 to 398-409;
``benchmarks/results/inference/h200-decode-combo/``). And it sets ``triton.enable_pdl``: on sm_90+ each fused
kernel launches as a programmatic dependent of the one before it (it starts while that one finishes and waits for
it before reading), as the frozen layers' ``decode_tc`` and the decode attention do on their own
(``triton_common.pdl_ok``); the launches of the ~230 kernels of a ``3b`` token step then overlap the kernels
before them. On the H200 that took the ``3b`` step at batch 1 from 812-815 to 890-892 tokens/s, with the same tokens
(``benchmarks/results/inference/h200-decode-pdl-plain/``). And it sets ``triton.multi_kernel`` to 3: the residual
adds and RMS norms between the projections are reductions over ``d_model`` elements a row, which Inductor writes as a
loop over blocks of the row above 1,024 elements (``triton_red_*``: the row read twice, one L2 round trip a block)
and as one block in registers below (``triton_per_*``, a "persistent" reduction). With ``multi_kernel`` it builds
both forms of every reduction up to 16 times that size and picks one at run time: 1 would pick the faster by
timing the first call (a choice that may differ from run to run, and with it the summation order); 3 always runs
index 1 of the two, which is the persistent one (Inductor sorts them by it: ``add_multi_kernel_choices`` in
``torch/_inductor/codegen/triton.py``; ``tests/test_gpu.py`` checks that it is). On the H200 that took the ``3b``
step at batch 1 from 939 to 977 tokens/s (dense bf16: 415 to 418) and at batch 16 from 6,107 to 6,197 (dense:
4,644 to 4,680), greedy tokens still equal to the eager step's
(``benchmarks/results/inference/h200-persistent-norms/``). Frozen models (``arbitor.for_inference``) decode from
``T_packed`` and float32 group scales only.

The same decoder works without a graph (``cuda_graph=False``, any device): the static-cache path eagerly,
which is what the CPU tests compare with ``generate``. Greedy tokens equal the eager path's (the graph
replays exactly the kernels of the eager static step; the static step differs from ``generate``'s only in
attending over a padded buffer whose masked keys contribute exact zeros).

A captured graph holds the addresses of the model's buffers and of the cache: it stays valid while the
weights are updated in place (a ``ternary_step`` or ``load_state_dict`` into the same tensors) but not if
buffers are replaced (``model.to(...)``); build a new decoder then. One decoder serves any number of
``generate`` calls of the same batch size whose prompt + new tokens fit ``max_len``.
"""
from __future__ import annotations

import time
import types
from typing import Optional

import torch
from torch import nn

from .attention import StaticKVCache

__all__ = ["GraphedDecoder", "generate_static", "sample_next", "COMPILE_OPTIONS"]

#: Inductor options of the compiled token step (module doc): bf16 intermediates rounded as in eager mode;
#: independent kernels launched together; programmatic dependent launch (sm_90+; Inductor ignores it elsewhere);
#: the norms' reductions in one block of registers up to 16,384 elements a row (Triton kernels only)
COMPILE_OPTIONS = {"emulate_precision_casts": True, "combo_kernels": True, "triton.enable_pdl": True,
                   "triton.multi_kernel": 3}


def sample_next(logits: torch.Tensor, temperature: float, top_k: Optional[int],
                generator: Optional[torch.Generator]) -> torch.Tensor:
    """Next tokens ``[B, 1]`` from float32 ``logits [B, V]``: argmax at ``temperature == 0``, else sampled."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _own_code(method):
    """``method`` (bound) as a method whose function has a code object of its own. Dynamo keeps its compiled
    graphs on the code object, at most ``recompile_limit`` (8) of them; every decoder's step guards on its own
    model and cache, so without this the ninth compiled decoder of a process ran its step uncompiled (a warning
    only: a benchmark process measured the dense ``3b`` batch-16 step so at 2,741 tokens/s, 4,531 compiled)."""
    f = method.__func__
    own = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    own.__qualname__, own.__kwdefaults__ = f.__qualname__, f.__kwdefaults__
    return types.MethodType(own, method.__self__)


class GraphedDecoder:
    """Decode ``batch`` sequences of up to ``max_len`` tokens (prompt + new) from ``model``.

    ``cuda_graph=True`` needs the model on CUDA. ``compile_options``: Inductor options added to (or overriding)
    ``COMPILE_OPTIONS`` for ``compile=True`` (e.g. ``{"triton.enable_pdl": False}``). ``timings`` (after
    ``generate``): ``prefill_s`` (the prompt and the first, eager, token step) and ``decode_s`` (the remaining
    steps; graph replays), both synchronised wall times, and ``decode_tokens`` (tokens produced in ``decode_s``).
    """

    def __init__(self, model: nn.Module, batch: int, max_len: int, cuda_graph: bool = True,
                 compile: bool = False, compile_options: Optional[dict] = None) -> None:
        cfg = model.cfg
        if max_len > cfg.max_ctx:
            raise ValueError(f"max_len={max_len} exceeds the model's max_ctx={cfg.max_ctx}")
        ref = next(iter(model.buffers()), None)
        if ref is None:
            ref = next(model.parameters())
        self.device = ref.device
        if cuda_graph and self.device.type != "cuda":
            raise ValueError("GraphedDecoder(cuda_graph=True) needs the model on a CUDA device")
        self.model = model
        self.cuda_graph = cuda_graph
        self.batch = batch
        self.max_len = max_len
        lti = (len(cfg.lti_decays), cfg.d_model) if cfg.lti_decays else None
        self.cache = StaticKVCache(cfg.n_layers, batch, cfg.n_heads, cfg.d_model // cfg.n_heads, max_len,
                                   getattr(torch, cfg.compute_dtype), self.device, lti)
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        # the prompt runs eagerly (one call per sequence); the token step is what repeats
        self.compiled = compile
        options = {**COMPILE_OPTIONS, **(compile_options or {})}
        self._token_step = torch.compile(_own_code(self._step), options=options) if compile else self._step
        self.logits: Optional[torch.Tensor] = None
        self.timings: dict = {}

    def _step(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.model.hidden(idx, self.cache)
        return self.model.decoders["text"](h[:, -1]).float()

    def _capture(self) -> None:
        """Capture one token step (reading ``self.tok``); the capture itself runs nothing, so the cache and
        its host mirror are left as they were."""
        length, started = self.cache.length, self.cache._started
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._token_step(self.tok)
        self.cache.length, self.cache._started = length, started

    def _dry_step(self) -> None:
        """Run the compiled token step once at the current position and undo its effect on the cache, so that
        the capture that follows finds a compiled entry for this position (Dynamo guards on the host length;
        compiling inside a capture would fail). The keys/values it wrote at ``pos`` are overwritten by the next
        real step before anything reads them; the position and the LTI states are restored."""
        saved = self.cache.position()
        self._token_step(self.tok)
        self.cache.set_position(saved)

    def next_logits(self, tok: torch.Tensor) -> torch.Tensor:
        """One token step after the prefill: ``tok [B, 1]`` -> float32 logits ``[B, V]`` (a graph replay once
        captured; the returned tensor is the graph's output buffer, overwritten by the next step)."""
        if self.cache.length + 1 > self.max_len:
            raise ValueError(f"the static cache holds {self.max_len} positions")
        self.tok.copy_(tok)
        if not self.cuda_graph:
            return self._token_step(self.tok)
        if self.graph is None:
            # the first step runs eagerly on a side stream (kernel compilation, cuBLAS / allocator warm-up),
            # as torch.cuda.graphs recommends before a capture; the capture follows
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                logits = self._token_step(self.tok)
                if self.compiled:
                    self._dry_step()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self._capture()
            return logits
        self.graph.replay()
        self.cache.length += 1
        return self.logits

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """As ``ArbitorLM.generate`` (``[B, T0] -> [B, T0 + new]``), within ``max_len`` positions."""
        B, T0 = idx.shape
        if B != self.batch:
            raise ValueError(f"this decoder was built for batch {self.batch}, got {B}")
        if T0 + max_new_tokens > self.max_len:
            raise ValueError(f"prompt {T0} + {max_new_tokens} new tokens exceed max_len={self.max_len}")
        was_training = self.model.training
        self.model.eval()
        try:
            self.cache.reset()
            t0 = time.perf_counter()
            if max_new_tokens <= 0:
                return idx
            nxt = sample_next(self._step(idx), temperature, top_k, generator)
            toks = [nxt]
            if max_new_tokens > 1:
                nxt = sample_next(self.next_logits(nxt), temperature, top_k, generator)
                toks.append(nxt)
            _sync(self.device)
            t1 = time.perf_counter()
            for _ in range(max_new_tokens - 2):
                nxt = sample_next(self.next_logits(nxt), temperature, top_k, generator)
                toks.append(nxt)
            out = torch.cat([idx] + toks, dim=1)
            _sync(self.device)
            self.timings = {"prefill_s": t1 - t0, "decode_s": time.perf_counter() - t1,
                            "decode_tokens": B * max(0, max_new_tokens - 2)}
            return out
        finally:
            self.model.train(was_training)


@torch.no_grad()
def generate_static(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, generator: Optional[torch.Generator] = None,
                    cuda_graph: bool = True) -> torch.Tensor:
    """``model.generate`` through a fresh ``GraphedDecoder`` sized for this call (``cuda_graph=False``: the
    static-cache path eagerly). Prompts longer than ``max_ctx`` or runs past it take ``model.generate_dynamic``
    (which rebuilds its cache from the last ``max_ctx // 2`` tokens)."""
    B, T0 = idx.shape
    if T0 + max_new_tokens > model.cfg.max_ctx:
        return model.generate_dynamic(idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                      generator=generator)
    dec = GraphedDecoder(model, B, T0 + max_new_tokens, cuda_graph=cuda_graph)
    return dec.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)

"""Helpers shared by the decode tests on the CPU (``tests/model/test_decode.py``) and on the GPU
(``tests/test_gpu.py``)."""
from __future__ import annotations

import torch


@torch.no_grad()
def forced_logits(dec, idx: torch.Tensor, tokens: torch.Tensor, steps: int) -> torch.Tensor:
    """A ``GraphedDecoder``'s logits teacher-forced along ``tokens``: the prompt ``idx [B, T0]``'s step, then
    ``steps`` token steps fed ``tokens[:, T0], tokens[:, T0 + 1], ...``; stacked, ``[steps + 1, B, vocab]``. Two
    decoders' logits are compared along the same tokens even where their own greedy choices would part."""
    t0 = idx.shape[1]
    dec.cache.reset()
    out = [dec._step(idx)]
    for t in range(steps):
        out.append(dec.next_logits(tokens[:, t0 + t:t0 + t + 1]).clone())
    return torch.stack(out)

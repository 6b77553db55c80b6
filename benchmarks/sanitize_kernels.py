"""Run the Triton linear, vote and scale kernels once on odd shapes, for ``compute-sanitizer`` (CUDA only).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
        python benchmarks/sanitize_kernels.py

Without the caching allocator every tensor is its own allocation, so an out-of-bounds
read or write by a kernel lands outside it and memcheck reports it. Covers: group
inside / equal to / spanning K tiles, M/N/K tails, decode M, strided x, all dtypes,
and the default (untuned) configs. Kernels: ``arbitor.ternary.ops.linear_triton`` (``ternary_forward``,
``ternary_grad_x``, ``ternary_scale``) and ``arbitor.ternary.ops.votes_triton`` (``ternary_correlation_``).
"""
from __future__ import annotations

import sys

import torch

from arbitor.ternary.format import pack_ternary
from arbitor.ternary.ops import linear_triton, votes_triton

CASES = [  # M, K, N, group_size, config
    (37, 96, 45, 16, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64)),
    (19, 80, 33, 4, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32)),
    (23, 192, 17, 64, dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16)),
    (130, 320, 70, 64, None),
    (3, 1000, 77, 8, None),
    (1, 512, 130, 128, None),
    (16, 2048, 96, 32, None),
    (129, 4160, 257, 64, None),
]


def main() -> int:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    n = 0
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for M, K, N, gs, cfg in CASES:
            t = torch.randint(-1, 2, (N, K), device=dev)
            T_packed = pack_ternary(t)
            E = torch.randint(-6, -3, (N, K // gs), device=dev, dtype=torch.int8)
            corr = torch.randint(-9, 9, (N, K // gs), device=dev, dtype=torch.int64)
            step = torch.tensor(3, dtype=torch.int64, device=dev)
            xs = torch.randn(M, 2 * K, device=dev, dtype=dtype)[:, ::2]  # strided
            gy = torch.randn(M, N, device=dev, dtype=dtype)
            linear_triton.ternary_forward(xs, T_packed, E, corr, step, 1, K, gs, 4.0, config=cfg)
            linear_triton.ternary_grad_x(gy, T_packed, E, corr, step, 1, K, gs, 4.0, config=cfg)
            votes_triton.ternary_correlation_(gy, xs, T_packed, corr, K, gs, config=cfg)
            linear_triton.ternary_scale(E, corr, step, 1, gs, 4.0)
            n += 4
    torch.cuda.synchronize()
    print(f"sanitize_kernels: {n} kernel launches completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

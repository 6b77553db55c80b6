"""Run every Triton ternary kernel once on odd shapes, for ``compute-sanitizer`` (CUDA only).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
        python benchmarks/sanitize_kernels.py

Without the caching allocator every tensor is its own allocation, so an out-of-bounds
read or write by a kernel lands outside it and memcheck reports it. Covers: group
inside / equal to / spanning K tiles, M/N/K tails, decode M (split reduction), strided x, all dtypes,
explicit configs, the fixed default configs (``path="fused"`` above 16 rows) and the expand path,
``grad_W`` in one chunk and in several (``ARB_GRADW_CHUNK_ELEMS``), a ballot with a NaN (skipped on the
device), and every counter width. Kernels:

* ``arbitor.ternary.ops.linear_triton``: ``ternary_fwd_kernel`` / ``ternary_gradx_kernel`` (with their ``split_epilogue``
  on the decode path) through ``ternary_forward`` / ``ternary_grad_x``, ``expand_kernel``
  (``expand_weight_triton``), ``ternary_scale_kernel`` (``ternary_scale``);
* ``arbitor.ternary.ops.votes_triton``: ``ballot_vote_kernel`` + ``apply_ballot_kernel``
  (``bigint_ballot_triton_``);
* ``arbitor.ternary.ops.counter_triton``: ``row_scale_kernel`` (16-bit ``grad_W`` in one chunk),
  ``counter_step_kernel``, ``count_ballot_kernel`` (``counter.counter_ballot_(impl="triton")``).

``--device cpu`` runs the same calls on the Triton interpreter (``TRITON_INTERPRET=1``): a dry run of the
script, not a memory check.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from arbitor.ternary.format import COUNTER_BITS, counter_packed_shape, pack_ternary  # noqa: E402

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
STRENGTH = 4.0


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu with TRITON_INTERPRET=1 (dry run)")
    ap.add_argument("--cases", type=int, default=None, help="only the first N cases")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("sanitize_kernels.py needs a CUDA device (or --device cpu with TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    from arbitor.ternary.ops import counter, linear_triton, votes_triton

    def counters():
        return torch.zeros((), dtype=torch.int64, device=dev), torch.zeros((), dtype=torch.int64, device=dev)

    torch.manual_seed(0)
    n = 0
    cases = CASES[:args.cases] if args.cases is not None else CASES
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for i, (M, K, N, gs, cfg) in enumerate(cases):
            t = torch.randint(-1, 2, (N, K), device=dev)
            T_packed = pack_ternary(t)
            E = torch.randint(-6, -3, (N, K // gs), device=dev, dtype=torch.int8)
            corr = torch.randint(-9, 9, (N, K // gs), device=dev, dtype=torch.int64)
            step = torch.tensor(3, dtype=torch.int64, device=dev)
            pending = torch.tensor(1, dtype=torch.int64, device=dev)
            xs = torch.randn(M, 2 * K, device=dev, dtype=dtype)[:, ::2]  # strided
            gy = torch.randn(M, N, device=dev, dtype=dtype)
            state = (T_packed, E, corr, step, pending, K, gs, STRENGTH)

            # linear: explicit config (fused), path="auto" (fused decode + split below 17 rows, else expand + cuBLAS),
            # and the fixed default config of the fused kernels above 16 rows
            paths = [dict(config=cfg)] + ([dict(path="fused")] if cfg is None and M > linear_triton.FUSED_MAX_M
                                          else [])
            for kw in paths:
                linear_triton.ternary_forward(xs, *state, **kw)
                linear_triton.ternary_grad_x(gy, *state, **kw)
                n += 2
            linear_triton.expand_weight_triton(*state[:-1], STRENGTH, dtype)
            linear_triton.ternary_scale(E, corr, step, pending, gs, STRENGTH)
            n += 2

            # bigint ballot: one grad_W chunk, several chunks (7 rows each: a tail chunk), and a skipped NaN ballot
            p, nf = counters()
            votes_triton.bigint_ballot_triton_(gy, xs, T_packed, corr, p, nf, K, gs)
            with _env("ARB_GRADW_CHUNK_ELEMS", str(7 * K)):
                votes_triton.bigint_ballot_triton_(gy, xs, T_packed, corr, p, nf, K, gs)
            x_nan = xs.clone()
            x_nan[M // 2, K // 2] = float("nan")
            votes_triton.bigint_ballot_triton_(gy, x_nan, T_packed, corr, p, nf, K, gs)
            n += 3

            # counter ballot (fused Triton step): one chunk (16-bit: row-scale kernel finds the non-finite flag),
            # several chunks, and a NaN ballot; the counter width cycles over the cases
            bits = COUNTER_BITS[i % len(COUNTER_BITS)]
            C_packed = torch.randint(0, 256, counter_packed_shape(N, K, bits), device=dev, dtype=torch.uint8)
            hash_key = torch.tensor(12345 + i, dtype=torch.int64, device=dev)
            p, nf = counters()
            for x_in, chunk in ((xs, None), (xs, str(7 * K)), (x_nan, None)):
                with _env("ARB_GRADW_CHUNK_ELEMS", chunk) if chunk else contextlib.nullcontext():
                    counter.counter_ballot_(gy, x_in, T_packed, C_packed, corr, step, p, nf, hash_key, K, gs, bits,
                                            0.5, impl="triton")
                n += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"sanitize_kernels: {n} op calls completed ({len(cases)} cases x 3 dtypes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Launch one decode GEMV a few times, for Nsight Compute (``ncu``) to read its hardware counters.

Usage on a GPU machine (Firecracker runtimes: ncu reads counters there; leave the clocks alone)::

    ncu --clock-control none --kernel-name regex:decode_tc_kernel --launch-skip 2 --launch-count 1 \\
        --set full python benchmarks/gemv_ncu.py --K 8192 --N 8192 --M 1 --kernel tc

``--kernel``: ``tc`` (``decode_tc_kernel``, the frozen layer's GEMV; ``--layout tc``: its buffers in the ``tc``
layout that ``for_inference`` gives layers on CUDA, ``format.tc_tiles``; ``rows``, the default here: the row
layout), ``cublas`` (``x @ W.T`` in bf16, the
baseline) or ``copy`` (a device-to-device copy of a tensor of the frozen layer's bytes: what streaming that many
bytes costs). ``ncu`` flushes the caches before each measured launch (its default ``--cache-control all``), so
the weights come from HBM as in the benchmark's rotated copies (``bench_decode.py``). This script measures
nothing itself; ``benchmarks/results/inference/h200-ncu-*.txt`` hold ncu's reports and name their command.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--K", type=int, default=8192)
    ap.add_argument("--N", type=int, default=8192)
    ap.add_argument("--M", type=int, default=1)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--kernel", choices=("tc", "cublas", "copy"), default="tc")
    ap.add_argument("--layout", choices=("rows", "tc"), default="rows",
                    help="the frozen layer's buffer layout for --kernel tc (format.tc_tiles)")
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--config", default="", help="decode_tc config overrides, e.g. R=1,num_warps=4,WARP_SPLIT=0")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gemv_ncu.py: needs a CUDA device", file=sys.stderr)
        return 2
    from arbitor.ternary.format import pack_ternary
    from arbitor.ternary.ops import decode_triton
    K, N, M, gs = args.K, args.N, args.M, args.group_size
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    config = {k: int(v) for k, v in (kv.split("=") for kv in args.config.split(",") if kv)}
    if args.kernel == "tc":
        g = torch.Generator().manual_seed(0)
        T_packed = pack_ternary(torch.randint(-1, 2, (N, K), generator=g)).cuda()
        S = (torch.rand(N, K // gs, generator=g) * 0.05 + 0.005).cuda()
        if args.layout == "tc":
            from arbitor.ternary.format import tc_tiles
            T_packed, S = tc_tiles(T_packed, S, K, gs)
        run = lambda: decode_triton.decode_forward(x, T_packed, S, K, gs, path="tc", config=config)  # noqa: E731
    elif args.kernel == "cublas":
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        run = lambda: x @ W.T  # noqa: E731
    else:
        src = torch.empty(N * K // 4 + N * (K // gs) * 4, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        run = lambda: dst.copy_(src)  # noqa: E731
    for _ in range(args.calls):
        run()
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Instructions a weight in the K loop of the decode kernels (``--kernel gemv``: the M = 1 ``decode_gemv_kernel``;
``--kernel mma``: ``decode_mma_kernel``, the 2-16 row tensor-core kernel, in its plane-by-plane form; ``--kernel
tc``: ``decode_tc_kernel``, the PTX tensor-core kernel, per row of x), from their
sm_90 SASS, compiled on any machine (no GPU: Triton ships ``ptxas`` and ``cuobjdump``).

The kernel is bound by instruction issue, mostly the integer pipe (``docs/inference.md``), so this count predicts
its speed on a Hopper GPU better than any CPU timing. The compile is specialised as the launcher's calls are at
run time (pointers and the integer arguments 16-aligned, ``stride_xk == 1``).

    python benchmarks/gemv_sass.py                      # the launcher's tile
    python benchmarks/gemv_sass.py --tile 16,2048,4 --tile 32,1024,4
    python benchmarks/gemv_sass.py --kernel mma         # _PLANES_TILE
    python benchmarks/gemv_sass.py --kernel tc          # decode_tc_kernel at one row (--tile R,TOKENS,WARPS)

Prints one line a tile: registers, instructions in the loop, per weight, integer-pipe ops per weight, the most
frequent opcodes. Must run without ``TRITON_INTERPRET``.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: opcodes issued to the integer pipe on sm_90 (IMAD goes to the FMA pipe)
INT_PIPE = ("PRMT", "LOP3", "IADD3", "SHF", "ISETP", "LEA", "SEL", "IABS", "VIADD", "SGXT", "LOP")


def loop_counts(sass: str) -> Counter:
    """Opcode counts of the widest backward branch's body (the K loop) of one kernel's SASS."""
    lines = re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+ )?([A-Z0-9]+)[^;]*;", sass)
    loops = [(int(a, 16), int(t, 16)) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+@!?P\d BRA 0x([0-9a-f]+)", sass)
             if int(t, 16) < int(a, 16)]
    if not loops:
        raise ValueError("no backward branch in the SASS: no loop found")
    end, start = max(loops, key=lambda p: p[0] - p[1])
    return Counter(op for addr, op in lines if start <= int(addr, 16) <= end)


def count(bn: int, bk: int, warps: int, group_size: int = 64, kernel_name: str = "gemv") -> dict:
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from arbitor.ternary.ops.decode_triton import decode_gemv_kernel, decode_mma_kernel, planes_ok
    from arbitor.ternary.ops.triton_common import SIGN_TABLES
    weights = bn * bk / (32 * warps)                      # weights a thread decodes per K step
    if kernel_name == "tc":     # bn = R (blocks of 16 features a warp), bk = tokens (1, 8, 16); one row's tile
        from arbitor.ternary.ops.decode_tc import TC_TILES, _constraints, decode_tc_kernel, tc_loop_chunks
        R, tokens = bn, bk
        tile = TC_TILES[tokens]._replace(R=R, num_warps=warps, PDL=False)   # the plain launch's loop
        fn = decode_tc_kernel
        sig = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*fp32", "y_ptr": "*bf16", "ws_ptr": "*fp32",
               "cnt_ptr": "*i32", "tbl_ptr": "*i32", "M": "i32", "N": "i32", "KW": "i32", "G": "i32",
               "stride_xm": "i32", "SPLIT": "i32", "Q_PER_SPLIT": "i32", "GS": "constexpr", "R": "constexpr",
               "TOKENS": "constexpr", "NUM_WARPS": "constexpr", "WARP_SPLIT": "constexpr",
               "GROUP_COLUMNS": "constexpr", "ASM": "constexpr",
               "CONSTRAINTS": "constexpr", "RELU_SQUARE": "constexpr", "INTERP": "constexpr", "PDL": "constexpr"}
        const = {"GS": group_size, "R": R, "TOKENS": tokens, "NUM_WARPS": warps, "WARP_SPLIT": tile.WARP_SPLIT,
                 "GROUP_COLUMNS": tile.GROUP_COLUMNS,
                 "ASM": tile.asm(group_size, tokens, False),
                 "CONSTRAINTS": _constraints(R, tokens), "RELU_SQUARE": False, "INTERP": False, "PDL": tile.PDL}
        aligned_names = ("x_ptr", "w_ptr", "s_ptr", "y_ptr", "ws_ptr", "cnt_ptr", "tbl_ptr", "N", "KW", "G",
                         "stride_xm", "Q_PER_SPLIT")
        # the loop body: tc_loop_chunks chunks of 256 columns (ahead + 1 register sets, or the ring's slots)
        weights = tc_loop_chunks(tile.AHEAD, tile.X_AHEAD, tile.RING) * R * 16 * 256 / 32
    elif kernel_name == "gemv":
        fn = decode_gemv_kernel
        sig = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*fp32", "y_ptr": "*bf16", "ws_ptr": "*fp32",
               "cnt_ptr": "*i32", "N": "i32", "K": "i32", "G": "i32", "KW": "i32", "stride_xk": "constexpr",
               "SPLIT": "i32", "Q_PER_SPLIT": "i32", "F_HI": "i32", "GS": "constexpr", "BLOCK_N": "constexpr",
               "BLOCK_K": "constexpr", "INTERP": "constexpr"}
        const = {"stride_xk": 1, "GS": group_size, "BLOCK_N": bn, "BLOCK_K": bk, "INTERP": False}
        aligned_names = ("x_ptr", "w_ptr", "s_ptr", "y_ptr", "ws_ptr", "cnt_ptr", "N", "K", "G", "KW", "Q_PER_SPLIT")
    else:
        fn = decode_mma_kernel
        sig = {"x_ptr": "*bf16", "t_ptr": "*u8", "s_ptr": "*fp32", "y_ptr": "*bf16", "ws_ptr": "*fp32",
               "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "G": "i32", "KB": "i32", "stride_xm": "i32",
               "stride_xk": "constexpr", "SPLIT": "i32", "K_PER_SPLIT": "i32", "GS": "constexpr",
               "DOT_PRECISION": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr",
               "INTERP": "constexpr", "PLANES": "constexpr", "T_HI": "constexpr", "T_LO": "constexpr"}
        t_hi, t_lo = SIGN_TABLES["bf16"]
        const = {"stride_xk": 1, "GS": group_size, "DOT_PRECISION": "tf32", "BLOCK_M": 16, "BLOCK_N": bn,
                 "BLOCK_K": bk, "INTERP": False, "PLANES": planes_ok(torch.bfloat16, group_size, bk), "T_HI": t_hi,
                 "T_LO": t_lo}
        aligned_names = ("x_ptr", "t_ptr", "s_ptr", "y_ptr", "ws_ptr", "cnt_ptr", "N", "K", "G", "KB", "stride_xm",
                         "K_PER_SPLIT")
    aligned = [i for i, k in enumerate(sig) if k in aligned_names]
    src = ASTSource(fn=fn, signature=sig, attrs={(i,): [["tt.divisibility", 16]] for i in aligned}, constexprs=const)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    cubin = Path(os.environ.get("TMPDIR", "/tmp")) / f"gemv_{bn}_{bk}_{warps}_{os.getpid()}.cubin"
    cubin.write_bytes(kernel.asm["cubin"])
    try:
        sass = subprocess.run([str(tools / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
        res = subprocess.run([str(tools / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                             check=True).stdout
    finally:
        cubin.unlink(missing_ok=True)
    ops = loop_counts(sass)
    total = sum(ops.values())
    return {"tile": (bn, bk, warps), "registers": int(re.search(r"REG:(\d+)", res).group(1)), "loop": total,
            "per_weight": total / weights, "int_per_weight": sum(ops[o] for o in INT_PIPE) / weights,
            "top": ops.most_common(9)}


def main(argv=None) -> int:
    from arbitor.ternary.ops.decode_tc import TC_TILES
    from arbitor.ternary.ops.decode_triton import _GEMV_TILE, _PLANES_TILE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", choices=("gemv", "mma", "tc"), default="gemv",
                    help="which decode kernel (default gemv; tc: decode_tc_kernel, --tile R,TOKENS,WARPS)")
    ap.add_argument("--tile", action="append", default=None, metavar="BLOCK_N,BLOCK_K,WARPS",
                    help="a launch tile (repeatable); default: the launcher's")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("gemv_sass.py: unset TRITON_INTERPRET (it compiles for a GPU)", file=sys.stderr)
        return 2
    tiles = []
    default = {"gemv": _GEMV_TILE[:3], "mma": _PLANES_TILE[:3], "tc": (TC_TILES[1].R, 1, TC_TILES[1].num_warps)}
    for t in args.tile or [",".join(map(str, default[args.kernel]))]:
        try:
            bn, bk, warps = (int(v) for v in t.split(","))
        except ValueError:
            print(f"gemv_sass.py: --tile takes BLOCK_N,BLOCK_K,WARPS as three integers, got {t!r}", file=sys.stderr)
            return 2
        tiles.append((bn, bk, warps))
    for bn, bk, warps in tiles:
        r = count(bn, bk, warps, kernel_name=args.kernel)
        name = f"R {bn}, {bk} token(s)" if args.kernel == "tc" else f"tile {bn} x {bk}"
        print(f"{name}, {warps} warps: {r['registers']} registers, {r['loop']} instructions in the K loop, "
              f"{r['per_weight']:.2f} a weight ({r['int_per_weight']:.2f} on the integer pipe); "
              + " ".join(f"{o}:{n}" for o, n in r["top"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

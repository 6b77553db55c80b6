"""A/B of the counter rule's per-weight step kernel on a GPU, one process: ``counter_step_kernel`` of the
2026-11-30 morning (taken from git at ``OLD`` = 8fe86d6, as ``inference/h200-gemv-ab/gemv_ab.py`` takes its A side)
against the current one (octet
tiles), at the layer shapes of ``bench_speed.py``; with the other parts of one ballot for scale (the bare
``grad_W`` GEMM, the row-scale pass, both rules' whole ballots) and a tile sweep of the current kernel.

    PYTHONPATH=. python benchmarks/results/speed/h200-counter-step-ab/counter_step_ab.py --out-dir DIR

Times: ``triton.testing.do_bench_cudagraph`` medians (ms). Writes ``DIR/counter_step_ab.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

#: the swept tiles of counter_step_kernel (BLOCK_R, BLOCK_K, num_warps)
TILES = [(16, 128, 4), (8, 256, 4), (32, 128, 4), (32, 128, 8), (16, 256, 8), (64, 64, 4), (8, 128, 2), (16, 128, 2),
         (32, 256, 8), (4, 512, 4)]
OLD = "8fe86d6"   # the commit whose counter_step_kernel is the A side
SHAPES = [(8192, 4096, 4096), (16384, 8192, 8192), (4096, 3072, 12288), (4096, 12288, 3072)]   # M, K, N


def _old_module(old_file: str | None = None):
    """``ops/counter_triton.py`` of commit ``OLD`` as a module (written to a file: Triton's jit reads the source);
    ``old_file``: that file's text saved beforehand (``git show OLD:arbitor/ternary/ops/counter_triton.py``), for a
    machine whose copy of the project has no git history."""
    import subprocess
    import tempfile
    src = (Path(old_file).read_text() if old_file else
           subprocess.run(["git", "show", f"{OLD}:arbitor/ternary/ops/counter_triton.py"], capture_output=True,
                          text=True, check=True, cwd=ROOT).stdout)
    src = src.replace("from ..format import", "from arbitor.ternary.format import").replace(
        "from .triton_common import", "from arbitor.ternary.ops.triton_common import")
    path = Path(tempfile.mkdtemp()) / "counter_triton_v1.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("counter_triton_v1", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    import triton
    from triton.testing import do_bench_cudagraph

    from arbitor.ternary.format import counter_packed_shape, counter_planes, pack_counters, pack_ternary
    from arbitor.ternary.ops import counter_triton
    from arbitor.ternary.ops.backend import get_ops
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=str(Path(__file__).parent))
    ap.add_argument("--gs", type=int, default=64)
    ap.add_argument("--bits", type=int, default=5)
    ap.add_argument("--old-file", default=None, help="the A side's source, saved from git (default: git show OLD)")
    args = ap.parse_args()
    v1 = _old_module(args.old_file)
    dev = torch.device("cuda")
    ops = get_ops(dev, "triton")
    gs, bits = args.gs, args.bits
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "command": "PYTHONPATH=. python benchmarks/results/speed/h200-counter-step-ab/counter_step_ab.py",
           "group_size": gs, "bits": bits, "rows": [], "sweep": []}

    def bench(fn):
        fn()
        torch.cuda.synchronize()
        return do_bench_cudagraph(fn, rep=50, return_mode="median")

    t0 = time.time()
    for M, K, N in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        gy = torch.randn(M, N, device=dev, dtype=torch.bfloat16) * 1e-3
        t = torch.randint(-1, 2, (N, K), device=dev)
        T = pack_ternary(t)
        C = pack_counters(torch.randint(0, 1 << bits, (N, K), device=dev), bits)
        assert tuple(C.shape) == counter_packed_shape(N, K, bits)
        corr = torch.zeros(N, K // gs, dtype=torch.int64, device=dev)
        key, step, pending, nonfinite = (torch.tensor(v, dtype=torch.int64, device=dev) for v in (7, 100, 0, 0))
        bad = torch.zeros((), dtype=torch.int32, device=dev)
        rate = torch.tensor(1.0, dtype=torch.float32, device=dev)
        gw = gy.t() @ x
        scale = counter_triton.row_scale_triton(gw, rate, bad)
        lo_bytes = counter_planes(K, bits)[0][3]

        def step_v1(T=T, C=C, corr=corr):
            v1.counter_block_triton_(gw, scale, T, C, corr, key, step, pending, bad, 0, K, gs, bits)

        def step_v2(T=T, C=C, corr=corr, cfg=None):
            if cfg is None:
                counter_triton.counter_block_triton_(gw, scale, T, C, corr, key, step, pending, bad, 0, K, gs, bits)
                return
            br, bk, w = cfg
            counter_triton.counter_step_kernel[(triton.cdiv(N, br), triton.cdiv(K, bk))](
                gw, scale, T, C, corr, key, step, pending, bad, N, K, T.shape[1], C.shape[1], lo_bytes,
                corr.shape[1], 0, gw.stride(0), BITS=bits, GS=gs, BLOCK_R=br, BLOCK_K=bk, num_warps=w)

        # the same ballot through both kernels: equal state after (both compiled for this GPU)
        pristine = [T.clone(), C.clone(), corr.clone()]   # the timing calls below move T, C, corr in place
        outs = []
        for fn in (step_v1, step_v2):
            s = [x.clone() for x in pristine]
            fn(*s)
            outs.append(s)
        diff = {n: int((a != b).sum()) for n, a, b in zip(("T_packed", "C_packed", "corr_accum"), *outs)}
        # each swept tile must leave the launcher's state for the same ballot; checked here, before the timing
        # calls below move T, C, corr and the ballot counter (pending) in place; a wrong tile is not timed
        tiles = [(br, bk, w) for br, bk, w in TILES if bk % gs == 0 and bk >= 8]
        tile_equal = {}
        for cfg in tiles:
            s = [x.clone() for x in pristine]
            step_v2(*s, cfg=cfg)
            tile_equal[cfg] = all(torch.equal(a, b) for a, b in zip(s, outs[1]))
        moved = int((outs[1][0] != T).sum())
        times = {"grad_W GEMM (cuBLAS bf16)": bench(lambda: gy.t() @ x),
                 "row scale": bench(lambda: counter_triton.row_scale_triton(gw, rate, bad)),
                 "step v1": bench(step_v1), "step v2": bench(step_v2),
                 "bigint ballot (whole)": bench(lambda: ops.bigint_ballot_(gy, x, T, corr, pending, nonfinite, K, gs)),
                 "counter ballot (whole)": bench(lambda: ops.counter_ballot_(gy, x, T, C, corr, step, pending,
                                                                             nonfinite, key, K, gs, bits, rate))}
        row = {"M": M, "K": K, "N": N, **{k: round(v, 4) for k, v in times.items()},
               "v1/v2": round(times["step v1"] / times["step v2"], 3), "bytes differing v1 vs v2": diff,
               "T bytes moved": moved}
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        for cfg in tiles:
            ms = bench(lambda c=cfg: step_v2(cfg=c)) if tile_equal[cfg] else None
            res["sweep"].append({"M": M, "K": K, "N": N, "BLOCK_R": cfg[0], "BLOCK_K": cfg[1], "warps": cfg[2],
                                 "equal": tile_equal[cfg], "ms": round(ms, 4) if ms else None})
        best = min((r for r in res["sweep"] if (r["K"], r["N"]) == (K, N) and r["ms"]), key=lambda r: r["ms"])
        print("best tile", best, flush=True)
        x = gy = t = T = C = corr = gw = scale = None
        torch.cuda.empty_cache()
    res["wall_s"] = round(time.time() - t0, 1)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "counter_step_ab.json").write_text(json.dumps(res, indent=1))
    keys = [k for k in res["rows"][0] if k not in ("M", "K", "N", "bytes differing v1 vs v2", "T bytes moved")]
    md = [f"# counter_step_kernel A/B ({res['device']})", "", f"Command: `{res['command']}`; torch {res['torch']}, "
          f"triton {res['triton']}; group {gs}, {bits}-bit counters; CUDA-graph medians, ms.", "",
          "| M x K -> N | " + " | ".join(keys) + " | state differing v1 vs v2 |",
          "|---|" + "---:|" * len(keys) + "---|"]
    for r in res["rows"]:
        md.append(f"| {r['M']}x{r['K']}->{r['N']} | " + " | ".join(str(r[k]) for k in keys)
                  + f" | {r['bytes differing v1 vs v2']} |")
    md += ["", "Tile sweep of the current kernel (BLOCK_R x BLOCK_K, warps: ms):", ""]
    for M, K, N in SHAPES:
        cells = [f"{r['BLOCK_R']}x{r['BLOCK_K']}/{r['warps']}: {r['ms'] if r.get('equal', True) else 'WRONG STATE'}"
                 for r in res["sweep"] if (r["K"], r["N"]) == (K, N)]
        md.append(f"* {M}x{K}->{N}: " + ", ".join(cells))
    (out / "counter_step_ab.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A/B of the counter rule's per-weight step kernel on a GPU, one process: ``counter_step_kernel`` of main at
``OLD`` = a8625d1 (octet tiles of ``[BLOCK_R, BLOCK_K / 8, 8]`` values; taken from git, or from ``--old-file``)
against the current one (octets held as words, eight positions stepped one at a time), at the layer shapes of
``bench_speed.py``; with the other parts of one ballot for scale (the bare ``grad_W`` GEMM, the row-scale pass,
both rules' whole ballots) and a sweep of the current kernel's tile (``STEP_OCTETS`` x ``STEP_WARPS``).

    PYTHONPATH=. python benchmarks/results/speed/h200-counter-step-words/counter_step_words_ab.py --out-dir DIR

Times: ``triton.testing.do_bench_cudagraph`` medians (ms). Writes ``DIR/counter_step_words_ab.json`` and ``.md``.
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

#: the swept tiles of counter_step_kernel (STEP_OCTETS, STEP_WARPS)
TILES = [(32, 1), (64, 1), (64, 2), (128, 1), (128, 2), (128, 4), (256, 2), (256, 4), (256, 8), (512, 2), (512, 4),
         (512, 8), (1024, 4)]
OLD = "a8625d1"   # the commit whose counter_step_kernel is the A side
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
    path = Path(tempfile.mkdtemp()) / "counter_triton_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("counter_triton_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    import triton
    from triton.testing import do_bench_cudagraph

    from arbitor.ternary.format import counter_packed_shape, pack_counters, pack_ternary
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
           "command": "PYTHONPATH=. python benchmarks/results/speed/h200-counter-step-words/counter_step_words_ab.py",
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

        def step_v1(T=T, C=C, corr=corr):
            v1.counter_block_triton_(gw, scale, T, C, corr, key, step, pending, bad, 0, K, gs, bits)

        def step_v2(T=T, C=C, corr=corr, cfg=None):
            saved = counter_triton.STEP_OCTETS, counter_triton.STEP_WARPS
            if cfg is not None:
                counter_triton.STEP_OCTETS, counter_triton.STEP_WARPS = cfg
            try:
                counter_triton.counter_block_triton_(gw, scale, T, C, corr, key, step, pending, bad, 0, K, gs, bits)
            finally:
                counter_triton.STEP_OCTETS, counter_triton.STEP_WARPS = saved

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
        tiles = list(TILES)
        tile_equal = {}
        for cfg in tiles:
            s = [x.clone() for x in pristine]
            step_v2(*s, cfg=cfg)
            tile_equal[cfg] = all(torch.equal(a, b) for a, b in zip(s, outs[1]))
        moved = int((outs[1][0] != T).sum())
        times = {"grad_W GEMM (cuBLAS bf16)": bench(lambda: gy.t() @ x),
                 "row scale": bench(lambda: counter_triton.row_scale_triton(gw, rate, bad)),
                 "step a8625d1": bench(step_v1), "step now": bench(step_v2),
                 "bigint ballot (whole)": bench(lambda: ops.bigint_ballot_(gy, x, T, corr, pending, nonfinite, K, gs)),
                 "counter ballot (whole)": bench(lambda: ops.counter_ballot_(gy, x, T, C, corr, step, pending,
                                                                             nonfinite, key, K, gs, bits, rate))}
        row = {"M": M, "K": K, "N": N, **{k: round(v, 4) for k, v in times.items()},
               "before / now": round(times["step a8625d1"] / times["step now"], 3),
               "bytes differing a8625d1 vs now": diff,
               "T bytes moved": moved}
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        for cfg in tiles:
            ms = bench(lambda c=cfg: step_v2(cfg=c)) if tile_equal[cfg] else None
            res["sweep"].append({"M": M, "K": K, "N": N, "octets": cfg[0], "warps": cfg[1],
                                 "equal": tile_equal[cfg], "ms": round(ms, 4) if ms else None})
        best = min((r for r in res["sweep"] if (r["K"], r["N"]) == (K, N) and r["ms"]), key=lambda r: r["ms"])
        print("best tile", best, flush=True)
        x = gy = t = T = C = corr = gw = scale = None
        torch.cuda.empty_cache()
    res["wall_s"] = round(time.time() - t0, 1)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "counter_step_words_ab.json").write_text(json.dumps(res, indent=1))
    keys = [k for k in res["rows"][0] if k not in ("M", "K", "N", "bytes differing a8625d1 vs now", "T bytes moved")]
    md = [f"# counter_step_kernel A/B ({res['device']})", "", f"Command: `{res['command']}`; torch {res['torch']}, "
          f"triton {res['triton']}; group {gs}, {bits}-bit counters; CUDA-graph medians, ms.", "",
          "| M x K -> N | " + " | ".join(keys) + " | state differing a8625d1 vs now |",
          "|---|" + "---:|" * len(keys) + "---|"]
    for r in res["rows"]:
        md.append(f"| {r['M']}x{r['K']}->{r['N']} | " + " | ".join(str(r[k]) for k in keys)
                  + f" | {r['bytes differing a8625d1 vs now']} |")
    md += ["", "Tile sweep of the current kernel (octets a program / warps: ms):", ""]
    for M, K, N in SHAPES:
        cells = [f"{r['octets']}/{r['warps']}: {r['ms'] if r.get('equal', True) else 'WRONG STATE'}"
                 for r in res["sweep"] if (r["K"], r["N"]) == (K, N)]
        md.append(f"* {M}x{K}->{N}: " + ", ".join(cells))
    (out / "counter_step_words_ab.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

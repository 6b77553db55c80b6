"""Decode speed: the ternary layer's GEMV and a model's decode tokens/s against dense float weights.

Rows (``benchmarks/results/inference/<device>.json|md``, the layout of the inference issue: ``name``, ``shape``,
``arbitor_ms``, ``baseline``, ``baseline_ms``, ``ratio`` = baseline_ms / arbitor_ms, i.e. arbitor tokens/s
over the baseline's for decode rows):

* ``gemv_m1`` / ``gemv_m4`` / ``gemv_m16`` (GPU, ``--parts gemv``): ``ternary_forward`` (the launcher's own
  dispatch: the M = 1 GEMV at M = 1, the fused kernel at M = 4, 16; the forced ``fused`` kernel, and at M = 1
  the forced ``gemv``, are recorded beside it) at M = 1, 4, 16 for (K, N) in
  (4096, 4096), (8192, 8192), (3072, 12288), (12288, 3072), bf16 activations, group size 64, against cuBLAS
  bf16 ``x @ W.T`` and against the layer's memory-bandwidth bound (bytes of ``T_packed`` + ``E`` +
  ``corr_accum`` at ``--hbm-tbps``). Each timing is a CUDA graph of one call per weight copy, the copies
  rotated so that the weights read in a replay exceed the L2 cache (``--l2-mb`` x 4 bytes per side), replayed
  ``--reps`` times: per-call device time, no Python launch overhead, weights from HBM. Beside each row, the
  harness's measured floors (``benchmarks/_read_floor.py``): a kernel that only reads the frozen layer's bytes
  (``read_floor_ms``; ``floor_ratio`` = cuBLAS ms / read floor ms, the ceiling of the row's ratio) and an empty
  launch (``launch_floor_ms``). On sm_90+ the frozen layer launches as a programmatic dependent, so in the
  harness's chain each call overlaps the one before it; ``frozen_no_pdl_ms`` / ``ratio_no_pdl`` time the same
  kernel launched plainly. The frozen layer's buffers are in the ``tc`` layout that ``for_inference`` gives layers
  on CUDA (``format.tc_tiles``); ``frozen_rows_ms`` / ``ratio_rows`` time it in the row layout.
* ``decode_<preset>_b1`` / ``_b16``: greedy decode tokens/s of ``--new`` tokens after a ``--prompt``-token
  prompt. GPU (``--preset 3b`` by default): both models built on the meta device and materialised with random
  weights on the GPU (``bench_speed._build``), arbitor ternary against ``linear="dense"`` bf16, both through
  ``arbitor.model.decode.GraphedDecoder`` (static KV cache, one token step replayed as a CUDA graph; the
  prefill and the first step are excluded from the timing). ``--fuse`` adds both models with fused q / k / v /
  gate projections, ``--inductor-pdl`` the compiled step with Inductor's programmatic dependent launch (now the
  decoder's default, so the same as ``compile+graph``),
  ``--inductor-options NAME:KEY=VALUE,..`` the compiled step with other Inductor options; each side's figure is
  its fastest variant. arbitor's eager ``generate`` is timed beside it,
  the fast paths' greedy tokens are compared with the same static-cache step run eagerly over a cache of the
  same length (``fast_vs_eager_tokens``), and both models' weight bytes are recorded. CPU (``--preset small``):
  ``ArbitorLM.generate`` eagerly for both, dense float32 (the rows of ``results/inference/cpu.json``).

Beside the rows: ``--parts attention`` (GPU) times the token step's attention alone at the preset's shapes
(``attention``: the fused kernel of ``model/decode_attention.py`` at each tile width against the two-``bmm``
path it replaced); ``--parts sweep`` times launch configs of the decode kernels (``sweep``); ``--profile`` /
``--profile-fast`` keep torch.profiler kernel tables of the eager step and of each fast path's graph replays.

Partial results are written after every row.

    PYTHONPATH=. python benchmarks/bench_decode.py --preset small --device cpu
    PYTHONPATH=. python benchmarks/bench_decode.py --device cuda --out-dir $OUT      # H200: ~3 minutes
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitor.model.config import preset  # noqa: E402
from arbitor.model.text import ArbitorLM  # noqa: E402
from arbitor.ternary.audit import ternary_audit  # noqa: E402
from benchmarks._device import device_tag  # noqa: E402
from benchmarks._read_floor import PROGRAMS_PER_SM, launch_floor, read_floor  # noqa: E402

GEMV_SHAPES = [(4096, 4096), (8192, 8192), (3072, 12288), (12288, 3072)]


# ----------------------------------------------------------------------------- CPU rows (eager generate)
def prompt_ids(model, batch: int, prompt: int, device) -> torch.Tensor:
    """The benchmark's prompt, ``[batch, prompt]`` token ids drawn with seed 0: every measurement of a model (and
    the eager path its tokens are compared with) reads the same one."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, model.cfg.vocab_size, (batch, prompt), generator=gen).to(device)


def gemv_shapes(text: str) -> list[tuple[int, int]]:
    """``--gemv-shapes``: ``"K:N,K:N"`` -> ``[(K, N), ...]``; one line (``SystemExit``) for a bad list."""
    try:
        shapes = [tuple(int(v) for v in item.split(":")) for item in text.split(",")]
        if all(len(s) == 2 and s[0] > 0 and s[0] % 256 == 0 and s[1] > 0 for s in shapes):
            return shapes
    except ValueError:
        pass
    raise SystemExit(f"--gemv-shapes: comma list of K:N with K a positive multiple of 256 and N positive; got {text!r}")


def inductor_variant(text: str) -> tuple[str, dict]:
    """``"NAME:KEY=VALUE[,KEY=VALUE]"`` -> ``(NAME, {KEY: VALUE})``, each value read as JSON (``true``, ``4``,
    ``"x"``) or else kept as a string: ``--inductor-options``' type (``argparse`` prints its
    ``ArgumentTypeError`` as one line and exits 2)."""
    name, sep, rest = text.partition(":")
    pairs = [kv.partition("=") for kv in rest.split(",")] if rest else []
    if not sep or not name or not pairs or any(not k or not eq for k, eq, _ in pairs):
        raise argparse.ArgumentTypeError(f"--inductor-options wants NAME:KEY=VALUE[,KEY=VALUE], got {text!r}")

    def value(v: str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return name, {k: value(v) for k, _, v in pairs}


def model_variants(models: dict, args) -> dict:
    """The models to measure: ``models`` (``ternary``, ``dense``), with ``--fuse`` also both with fused q / k / v /
    gate projections (``ternary-fused``, ``dense-fused``), kept to ``--models`` when given."""
    from arbitor import for_inference
    if args.fuse:
        models = dict(models, **{f"{k}-fused": for_inference(copy.deepcopy(models[k]), fuse_projections=True)
                                 for k in ("ternary", "dense")})
    return {k: m for k, m in models.items() if not args.models or k in args.models}


def fastest(tps: dict, side: str) -> tuple[Optional[str], Optional[float]]:
    """``(variant, tokens/s)`` of the fastest measured variant of ``side`` (``"ternary"`` or ``"dense"``, fused or
    not) among ``tps`` (``"<model>/<mode>" -> tokens/s or None``); ``(None, None)`` when none ran."""
    cands = {k: v for k, v in tps.items() if k.split("/")[0].split("-")[0] == side and v}
    return max(cands.items(), key=lambda kv: kv[1]) if cands else (None, None)


def tokens_per_s(model, batch: int, prompt: int, new: int, device, reps: int) -> float:
    idx = prompt_ids(model, batch, prompt, device)
    model.generate(idx, 2, temperature=0)                      # warm-up
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(idx, new, temperature=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return batch * new / best


def cpu_decode_rows(args, device, res, flush) -> None:
    """Frozen arbitor against dense float32, each in three forms: ``generate`` (eager, what a user calls), the
    static-cache token step (``GraphedDecoder(cuda_graph=False)``) and that step compiled (Inductor's C++
    backend); the faster form of each side is the row's figure (all are kept in ``variants_tokens_per_s``).
    ``--fuse``: both models also with fused q / k / v / gate projections (variants ``ternary-fused``,
    ``dense-fused``), as on the GPU."""
    from arbitor import for_inference
    dtype = "float32"
    models = {}
    for linear in ("ternary", "dense"):
        torch.manual_seed(0)
        cfg = preset(args.preset, linear=linear, compute_dtype=dtype, max_ctx=max(256, args.prompt + args.new))
        models[linear] = ArbitorLM(cfg).to(device).eval()
    res["weights"] = ternary_audit(models["ternary"])["logical_ternary_weights"]
    models["ternary"] = for_inference(models["ternary"])      # what generation uses: T_packed + float32 S
    models = model_variants(models, args)
    for batch in args.batches:
        tps = {}
        for k, m in models.items():
            tps[f"{k}/eager"] = tokens_per_s(m, batch, args.prompt, args.new, device, args.reps)
            tps[f"{k}/static"] = _graphed_tps(m, batch, args.prompt, args.new, args.reps, device)[0]
            if args.compile:
                tps[f"{k}/compile"] = _graphed_tps(m, batch, args.prompt, args.new, args.reps, device, compile=True)[0]
            print(f"decode {k} b{batch}: " + ", ".join(f"{v} {t:,.0f}" for v, t in tps.items()
                                                       if v.split("/")[0] == k), flush=True)
        (ka, a), (kb, b) = fastest(tps, "ternary"), fastest(tps, "dense")
        row = {"name": f"decode_{args.preset}_b{batch}", "shape": f"{args.preset} preset, batch {batch}, "
               f"{args.prompt}-token prompt, {args.new} new", "arbitor_ms": 1000 * batch / a,
               "arbitor": f"frozen model (arbitor.for_inference), {ka}",
               "baseline": f"same architecture, dense {dtype} weights, {kb} (the fastest of eager generate, the "
                           "static-cache step and the compiled static-cache step, of each model variant)",
               "baseline_ms": 1000 * batch / b, "ratio": a / b,
               "arbitor_tokens_per_s": a, "baseline_tokens_per_s": b, "variants_tokens_per_s": tps}
        res["rows"].append(row)
        print(row, flush=True)
        flush()


# ----------------------------------------------------------------------------- GPU: layer GEMV rows
def _graph_time(fn_list, reps: int) -> float:
    """Per-call device ms of the calls in ``fn_list`` (one each, in order), captured as one CUDA graph and
    replayed ``reps`` times."""
    for fn in fn_list[:2]:
        fn()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fn_list:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for fn in fn_list:
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del g
    times.sort()
    return times[len(times) // 2] / len(fn_list)


def _ternary_copies(N: int, K: int, gs: int, n: int, device):
    """``n`` random copies of a layer's state: ``(T_packed, E, corr_accum, step_counter, pending, S)``, ``S`` the
    float32 scale a frozen layer keeps (``arbitor.for_inference``)."""
    from arbitor.ternary.scale import bigint_scale
    out = []
    shifts = torch.tensor([0, 2, 4, 6], device=device, dtype=torch.uint8)
    for _ in range(n):
        codes = torch.randint(0, 3, (N, K // 4, 4), device=device, dtype=torch.uint8)
        T_packed = (codes << shifts).sum(-1, dtype=torch.uint8)
        E = torch.randint(-7, -5, (N, K // gs), device=device, dtype=torch.int8)
        corr = torch.randint(-100, 101, (N, K // gs), device=device, dtype=torch.int64)
        step = torch.tensor(8, dtype=torch.int64, device=device)
        S = bigint_scale(E, corr, step, gs, 4.0).contiguous()
        out.append((T_packed, E, corr, step, torch.zeros((), dtype=torch.int64, device=device), S))
    return out


def _copies_for(N: int, K: int, gs: int, l2_bytes: int, device):
    t_bytes = N * K // 4 + N * (K // gs) * (1 + 8)            # T_packed + E (int8) + corr_accum (int64)
    f_bytes = N * K // 4 + N * (K // gs) * 4                   # T_packed + S (float32): a frozen layer
    n_t = max(2, math.ceil(4 * l2_bytes / f_bytes))
    return t_bytes, f_bytes, _ternary_copies(N, K, gs, n_t, device)


def _floors(states, reps: int, device) -> dict:
    """The harness's floors over the frozen layers' copies (``_read_floor``): ``read_floor_ms`` (the fastest grid of
    a kernel that only reads ``T_packed`` + ``S``), its grid, and ``launch_floor_ms`` (a launch that writes a word
    a program)."""
    from arbitor.ternary.ops.triton_common import n_sm
    sms = n_sm(device)
    out = torch.empty(max(PROGRAMS_PER_SM) * sms, dtype=torch.int32, device=device)
    reads = {p: _graph_time([(lambda s=s, p=p: read_floor(s[0], s[5], p * sms, out)) for s in states], reps)
             for p in PROGRAMS_PER_SM}
    best = min(reads, key=reads.get)
    return {"read_floor_ms": reads[best], "read_floor_programs_per_sm": best, "read_floor_grid_ms": reads,
            "launch_floor_ms": _graph_time([(lambda: launch_floor(4 * sms, out)) for _ in states], reps)}


def gemv_rows(args, device, res, flush) -> None:
    from arbitor.ternary.format import tc_tiles, tc_tiles_ok
    from arbitor.ternary.ops import decode_triton, linear_triton
    gs, l2_bytes = 64, args.l2_mb * 2 ** 20
    for K, N in args.gemv_shapes:
        t_bytes, f_bytes, states = _copies_for(N, K, gs, l2_bytes, device)
        w_bytes = N * K * 2
        n_w = max(2, math.ceil(4 * l2_bytes / w_bytes))
        Ws = [torch.randn(N, K, device=device, dtype=torch.bfloat16) / math.sqrt(K) for _ in range(n_w)]
        floors = _floors(states, args.reps, device)
        # s[6]: the frozen layer's buffers as for_inference leaves them on CUDA (the tc layout where the shape allows)
        states = [(*s, tc_tiles(s[0], s[5], K, gs) if tc_tiles_ok(N, K, gs) else (s[0], s[5])) for s in states]
        for M in args.gemv_m:
            x = torch.randn(M, K, device=device, dtype=torch.bfloat16)
            times = {"gemv": None, "frozen_before_tc": None}  # the training layer's GEMV is M = 1 only
            # the frozen layer as the library launches it (on sm_90+ a programmatic dependent: in this chain of calls
            # each launch overlaps the call before it), and the same kernel launched plainly (its own time)
            # the frozen layer as for_inference leaves it on CUDA: its buffers in the tc layout (format.tc_tiles),
            # and the same layer in the row layout
            variants = {"frozen": lambda s: decode_triton.decode_forward(x, *s[6], K, gs),
                        "frozen_no_pdl": lambda s: decode_triton.decode_forward(x, *s[6], K, gs,
                                                                                config={"PDL": False}),
                        "frozen_rows": lambda s: decode_triton.decode_forward(x, s[0], s[5], K, gs),
                        "auto": lambda s: linear_triton.ternary_forward(x, *s[:5], K, gs, 4.0, path="auto"),
                        "fused": lambda s: linear_triton.ternary_forward(x, *s[:5], K, gs, 4.0, path="fused")}
            if M == 1:
                variants["gemv"] = lambda s: linear_triton.ternary_forward(x, *s[:5], K, gs, 4.0, path="gemv")
            # the frozen layer's kernels before decode_tc: the CUDA-core GEMV at one row, decode_mma_kernel above
            variants["frozen_before_tc"] = lambda s: decode_triton.decode_forward(x, s[0], s[5], K, gs,
                                                                                  path="gemv" if M == 1 else "mma")
            for path, fn in variants.items():
                try:
                    times[path] = _graph_time([(lambda s=s, fn=fn: fn(s)) for s in states], args.reps)
                except Exception as exc:   # one failing variant must not cost the run
                    traceback.print_exc()
                    times[path] = None
                    res.setdefault("errors", []).append(f"gemv M={M} K={K} N={N} path={path}: {exc!r}")
            base = _graph_time([(lambda W=W: x @ W.t()) for W in Ws], args.reps)
            bound_ms = 1000 * f_bytes / (args.hbm_tbps * 1e12)
            ms = times["frozen"]
            row = {"name": f"gemv_m{M}", "shape": f"M={M}, K={K}, N={N}, bf16, group 64", "arbitor_ms": ms,
                   "arbitor": "frozen layer (arbitor.for_inference; on CUDA the tc layout, format.tc_tiles): "
                              "decode_tc_kernel (tensor cores, 1-16 rows) over T_tiles + float32 S_tiles",
                   "baseline": f"cuBLAS bf16 x @ W.T (weights rotated over {n_w} copies)", "baseline_ms": base,
                   "ratio": base / ms if ms else None, "bound_ms": bound_ms,
                   "bound_note": f"(T_packed + S float32) bytes / {args.hbm_tbps} TB/s",
                   "of_bound": bound_ms / ms if ms else None,
                   "arbitor_tbps": f_bytes / (ms * 1e9) if ms else None,
                   "baseline_tbps": w_bytes / (base * 1e9),
                   "training_layer_ms": times["auto"], "training_layer_bytes": t_bytes,
                   "training_layer_ratio": base / times["auto"] if times["auto"] else None,
                   "arbitor_gemv_ms": times["gemv"], "arbitor_fused_ms": times["fused"],
                   "frozen_before_tc_ms": times["frozen_before_tc"],
                   "frozen_no_pdl_ms": times["frozen_no_pdl"],
                   "frozen_rows_ms": times["frozen_rows"],
                   "ratio_rows": base / times["frozen_rows"] if times["frozen_rows"] else None,
                   "ratio_no_pdl": base / times["frozen_no_pdl"] if times["frozen_no_pdl"] else None,
                   **floors, "floor_ratio": base / floors["read_floor_ms"],
                   "of_read_floor": floors["read_floor_ms"] / ms if ms else None,
                   "ternary_copies": len(states)}
            res["rows"].append(row)
            print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            flush()
        del states, Ws
        gc.collect()
        torch.cuda.empty_cache()


#: the sweep's grids: which M each serves (``planes``: ``decode_mma_kernel``'s plane-by-plane form, one 64-column
#: group a K step, at any M -- at M = 1 it races the GEMV; ``tc``: ``decode_tc_kernel``, the default at 1-16 rows)
SWEEP_PATHS = {"gemv": "M = 1", "gemv_expand": "M = 1", "mma": "M > 1", "planes": "any M", "tc": "any M"}


def _sweep_paths(M: int, wanted: list[str]) -> tuple[str, ...]:
    return tuple(p for p in wanted if p in ("planes", "tc") or (p == "mma") == (M > 1))


def _sweep_configs(M: int, path: str = "gemv", tc_grid: str = "full") -> list[dict]:
    """The grid: ``decode_gemv_kernel`` at M = 1 (the decode row the targets name), its plain form
    ``decode_gemv_expand_kernel`` (``path="gemv_expand"``), ``decode_mma_kernel`` above, that kernel's
    plane-by-plane form (``path="planes"``: ``BLOCK_K`` = the sweep's group of 64, wide ``BLOCK_N``), and
    ``decode_tc_kernel`` (``path="tc"``, its own keys; ``tc_grid="warp-split"``: the ``WARP_SPLIT`` configs and
    the default tiles)."""
    if path == "tc":       # decode_tc: R blocks of 16 features a warp (its own keys, not BLOCK_N / BLOCK_K)
        if tc_grid == "ring":            # words and scales through a shared-memory ring (RING slots), and the defaults
            from arbitor.ternary.ops.decode_tc import TC_TILE_ONE_WAVE, TC_TILE_SHORT_K, TC_TILES, tc_tokens
            rings = {2: (3, 4, 6, 8), 4: (2, 3, 4), 8: (2,)}
            grid = [{"R": 1, "num_warps": w, "PROGRAMS_PER_SM": p, "WARP_SPLIT": True, "GROUP_COLUMNS": gc,
                     "RING": ring, "X_AHEAD": xa}
                    for w, rs in rings.items() for ring in rs for p in ((1, 2) if w < 8 else (1,))
                    for gc in ((False, True) if M == 1 else (False,)) for xa in (True, False)]
            return grid + [t._asdict() for t in ([TC_TILES[tc_tokens(M)]]
                                                  + ([TC_TILE_SHORT_K[1], TC_TILE_ONE_WAVE[1]] if M == 1 else []))]
        if tc_grid == "prefetch":        # L2_PREFETCH on the default tiles (and, at one row, the short-K tile)
            from arbitor.ternary.ops.decode_tc import TC_TILE_SHORT_K, TC_TILES, tc_tokens
            tiles = [TC_TILES[tc_tokens(M)]] + ([TC_TILE_SHORT_K[1]] if M == 1 else [])
            grid = [{**t._asdict(), "L2_PREFETCH": p} for t in tiles for p in (0, 64, 128, 256)]
            if M == 1:   # the default tile's neighbours with 256-byte fetches: more programs or warps an SM
                grid += [{**grid[0], "PROGRAMS_PER_SM": p, "num_warps": w, "L2_PREFETCH": 256}
                         for p, w in ((1, 4), (4, 4), (2, 8))]
            return grid
        if tc_grid == "group-columns-ahead":     # one row, group columns, 2-3 chunks of weights in flight
            if M != 1:
                return []
            from arbitor.ternary.ops.decode_tc import TC_TILE_SHORT_K, TC_TILES
            return ([{"R": 1, "num_warps": w, "PROGRAMS_PER_SM": p, "WARP_SPLIT": ws, "GROUP_COLUMNS": True,
                      "AHEAD": ah, "X_AHEAD": False, "L2_PREFETCH": pf}
                     for w in (2, 4) for p in (1, 2, 4) for ws in (True, False) for ah in (2, 3) for pf in (0, 256)]
                    + [TC_TILES[1]._asdict(), TC_TILE_SHORT_K[1]._asdict()])
        if tc_grid == "group-columns":   # one row: each lane's 64 contiguous columns (tc_gemv_asm group_columns)
            if M != 1:
                return []
            return ([{"R": r, "num_warps": w, "PROGRAMS_PER_SM": p, "WARP_SPLIT": ws, "GROUP_COLUMNS": True}
                     for r in (1, 2) for w in (2, 4, 8) for p in (1, 2, 4) for ws in (True, False)]
                    + [{"R": 1, "num_warps": 4, "PROGRAMS_PER_SM": 2, "WARP_SPLIT": True}])
        if tc_grid == "warp-split":      # the warps of a program share its features and split its K range
            return ([{"R": r, "num_warps": w, "PROGRAMS_PER_SM": p, "WARP_SPLIT": True} for r in (1, 2)
                     for w in (4, 8) for p in (1, 2, 4)]
                    + [{"R": 1, "num_warps": 4, "PROGRAMS_PER_SM": 2}, {"R": 1, "num_warps": 2, "PROGRAMS_PER_SM": 2}])
        return [{"R": r, "num_warps": w, "PROGRAMS_PER_SM": p, "X_AHEAD": xa, "AHEAD": ah}
                for r in (1, 2) for w in (2, 4, 8) for p in (1, 2, 4) for ah, xa in ((1, True), (1, False), (2, False))
                if r * ah <= 2]
    if path == "planes":
        grid = [(bn, 64, w, p) for bn in (64, 128, 256, 512) for w in (4, 8) for p in (1, 2, 4)]
    elif M == 1 and path == "gemv_expand":   # a float tile of <= 64 values a thread (more: 128-255 registers)
        grid = [(bn, bk, w, p) for bn in (8, 16, 32, 64) for bk in (128, 256, 512, 1024) for w in (4, 8)
                for p in (2, 4, 8) if bn * bk <= 64 * 32 * w]
    elif M == 1:   # narrow and wide tiles, at most 128 x 512 columns (4,096 words) a K step; the 2026-11-30
        # sweep's best (16 x 2048) sat at the old grid's narrow / deep corner, so the grid goes past it
        grid = [(bn, bk, w, p) for bn in (4, 8, 16, 32, 64, 128) for bk in (256, 512, 1024, 2048, 4096, 8192)
                for w in (2, 4, 8) for p in (1, 2, 4, 8) if bn * bk <= 128 * 512 and bn * bk >= 32 * 32 * w]
    else:
        grid = [(bn, bk, 4, p) for bn in (16, 32, 64) for bk in (128, 256, 512) for p in (1, 2, 4)]
    return [{"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w, "PROGRAMS_PER_SM": p} for bn, bk, w, p in grid]


#: a swept config whose output is further than this from the float32 reference (relative Frobenius error) is
#: reported as wrong and never timed: bf16 outputs of a correct kernel stay near 2**-8 of the reference
SWEEP_TOLERANCE = 2e-2


def sweep_error(y: torch.Tensor, y_ref: torch.Tensor) -> float:
    """``||y - y_ref|| / ||y_ref||`` (float; inf when ``y`` is not finite)."""
    if not torch.isfinite(y).all():
        return float("inf")
    return float((y - y_ref).norm() / y_ref.norm().clamp_min(1e-30))


def sweep_rows(args, device, res, flush) -> None:
    """Launch configs of ``decode_gemv_kernel`` at every GEMV shape and M (``res["sweep"]``; the fastest per M
    bucket become ``decode_triton._DECODE_TILES``)."""
    from arbitor.ternary.ops import decode_triton
    from arbitor.ternary.ops.linear import decode_forward_torch
    gs, l2_bytes = 64, args.l2_mb * 2 ** 20
    t_end = time.perf_counter() + args.sweep_limit_s
    sweep = res.setdefault("sweep", [])
    for K, N in args.gemv_shapes:
        _, f_bytes, states = _copies_for(N, K, gs, l2_bytes, device)
        for M in args.gemv_m:
            x = torch.randn(M, K, device=device, dtype=torch.bfloat16)
            # every config's output is checked against the plain-torch reference (float32) before it may be the
            # fastest: a tile that is fast and wrong (as a counter-step tile was on 2026-11-30) is an error row
            y_ref = decode_forward_torch(x.float(), states[0][0], states[0][5], K, gs)
            # M = 1: the byte-permute GEMV and its plain form (decode_gemv_expand_kernel), each on its grid
            paths = _sweep_paths(M, args.sweep_paths)
            for path, cfg in [(p, c) for p in paths for c in _sweep_configs(M, p, args.sweep_tc_grid)]:
                if time.perf_counter() > t_end:
                    res.setdefault("errors", []).append("sweep stopped at its time limit")
                    flush()
                    return
                err = None
                try:
                    run = [(lambda s=s, c=cfg, p=path: decode_triton.decode_forward(
                        x, s[0], s[5], K, gs, config=c, path="mma" if p == "planes" else p)) for s in states]
                    err = sweep_error(run[0]().float(), y_ref)
                    ms = _graph_time(run, max(5, args.reps // 2)) if err <= SWEEP_TOLERANCE else None
                    if ms is None:
                        res.setdefault("errors", []).append(
                            f"sweep M={M} K={K} N={N} {path} {cfg}: wrong output, relative error {err:.3g}")
                except Exception as exc:
                    ms = None
                    res.setdefault("errors", []).append(f"sweep M={M} K={K} N={N} {path} {cfg}: {exc!r}"[:300])
                sweep.append({"M": M, "K": K, "N": N, "path": path, **cfg, "ms": ms, "rel_err": err,
                              "tbps": f_bytes / (ms * 1e9) if ms else None})
            for path in paths:
                best = min((r for r in sweep if (r["M"], r["K"], r["N"], r["path"]) == (M, K, N, path) and r["ms"]),
                           key=lambda r: r["ms"], default=None)
                print(f"sweep M={M} K={K} N={N} {path}: best {best}", flush=True)
            flush()
        del states
        gc.collect()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- GPU: the token step's attention
def attention_rows(args, device, res, flush) -> None:
    """The decode token step's attention at the preset's shapes (``[B, H, 1, hd]`` over a ``prompt + new``
    cache, the first ``prompt + 1`` positions allowed): the fused kernel (``decode_attention``) at its default
    launch and at each tile width, against the two-``bmm`` path it replaced; CUDA-graph timed, K and V rotated
    over copies larger than L2 (``res["attention"]``)."""
    from arbitor.model.attention import _one_query_bmm
    from arbitor.model.decode_attention import launch_config, one_query_attention
    from arbitor.ternary.ops.triton_common import n_sm
    cfg = preset(args.preset)
    H, hd, L = cfg.n_heads, cfg.d_model // cfg.n_heads, args.prompt + args.new
    mask = (torch.arange(L, device=device) <= args.prompt).view(1, L)
    for B in args.batches:
        kv_bytes = 2 * B * H * L * hd * 2
        n = max(2, math.ceil(4 * args.l2_mb * 2 ** 20 / kv_bytes))
        sets = [(torch.randn(B, H, 1, hd, device=device, dtype=torch.bfloat16),
                 torch.randn(B, H, L, hd, device=device, dtype=torch.bfloat16),
                 torch.randn(B, H, L, hd, device=device, dtype=torch.bfloat16)) for _ in range(n)]
        default = launch_config(B, H, L, hd, n_sm(device))
        variants = {"fused (default: BLOCK_L {BLOCK_L}, {SPLIT_TILES} tiles a program)".format(**default): {}}
        variants.update({f"fused, BLOCK_L {bl}": {"block_l": bl} for bl in (32, 64, 128, 256)})
        row = {"B": B, "H": H, "L": L, "hd": hd, "kv_bytes": kv_bytes, "ms": {}}
        ref = _one_query_bmm(*sets[0], mask).float()
        for name, kw in variants.items():
            out = one_query_attention(*sets[0], mask, **kw).float()
            row.setdefault("max_abs_diff_vs_bmm", {})[name] = float((out - ref).abs().max())
            row["ms"][name] = _graph_time([(lambda s=s, kw=kw: one_query_attention(*s, mask, **kw)) for s in sets],
                                          args.reps)
        row["ms"]["two bmm + softmax (before)"] = _graph_time([(lambda s=s: _one_query_bmm(*s, mask)) for s in sets],
                                                               args.reps)
        res.setdefault("attention", []).append(row)
        print(f"attention b{B}: {row['ms']}", flush=True)
        flush()


# ----------------------------------------------------------------------------- GPU: model decode rows
def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _weight_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _graphed_tps(model, batch: int, prompt: int, new: int, reps: int, device, compile: bool = False,
                 profile: bool = False, compile_options: Optional[dict] = None
                 ) -> tuple[float, torch.Tensor, Optional[dict]]:
    """Best decode tokens/s of ``reps`` generations (graphed, compiled or not; ``compile_options`` added to the
    decoder's Inductor options), the tokens, and (``profile``) the kernel table of a few graph replays
    (``_kernel_table``)."""
    from arbitor.model.decode import GraphedDecoder
    idx = prompt_ids(model, batch, prompt, device)
    dec = GraphedDecoder(model, batch, prompt + new, cuda_graph=device.type == "cuda", compile=compile,
                         compile_options=compile_options)
    out = dec.generate(idx, new, temperature=0)                 # capture (and compile)
    best = float("inf")
    for _ in range(reps):
        dec.generate(idx, new, temperature=0)
        best = min(best, dec.timings["decode_s"] / dec.timings["decode_tokens"])
    table = None
    if profile:        # the replayed step's kernels: the prompt, then token steps after the capture
        dec.generate(idx, 2, temperature=0)
        tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        table = _kernel_table(lambda d=dec: d.next_logits(tok), min(8, new - 3), device)
    del dec
    return 1.0 / best, out, table


def _kernel_table(step, steps: int, device, top: int = 14) -> dict:
    """GPU kernel times of ``steps`` calls of ``step`` (``torch.profiler``; kernels of a replayed CUDA graph
    included): the total per step and the ``top`` kernels."""
    from torch.profiler import ProfilerActivity, profile
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if t > 0:
            rows.append({"kernel": e.key[:90], "calls_per_step": e.count / steps, "us_per_step": t / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    return {"gpu_us_per_step": sum(r["us_per_step"] for r in rows),
            "kernels_per_step": sum(r["calls_per_step"] for r in rows), "top": rows[:top]}


def _profile(model, batch: int, prompt: int, device, steps: int = 3) -> dict:
    """Kernel times of ``steps`` eager static-cache token steps (what an uncompiled graph replays)."""
    from arbitor.model.decode import GraphedDecoder
    dec = GraphedDecoder(model, batch, prompt + steps + 2, cuda_graph=False)
    dec.generate(prompt_ids(model, batch, prompt, device), 2, temperature=0)
    tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
    return _kernel_table(lambda: dec.next_logits(tok), steps, device)


def gpu_decode_rows(args, device, res, flush) -> None:
    """Frozen arbitor (``for_inference``) against dense bf16, each graphed and compiled + graphed; the faster
    variant of each side is the row's figure (all variants are kept in ``variants``)."""
    from arbitor import for_inference
    from arbitor.model.decode import GraphedDecoder
    from benchmarks.bench_speed import _build
    name = args.preset
    models, wbytes = {}, {}
    for linear in ("ternary", "dense"):
        cfg = preset(name, linear=linear, compute_dtype="bfloat16", max_ctx=args.prompt + args.new,
                     activation_checkpointing=False)
        t = time.perf_counter()
        m = _build(cfg, device).eval()
        if linear == "ternary":
            wbytes["ternary_training_state"] = _weight_bytes(m)
            m = for_inference(m)
        models[linear] = m
        wbytes[linear] = _weight_bytes(m)
        print(f"built {name} {linear} in {time.perf_counter() - t:.1f}s, {wbytes[linear] / 2 ** 30:.2f} GiB",
              flush=True)
    res["weight_bytes"] = {"arbitor": wbytes["ternary"], "dense_bf16": wbytes["dense"],
                           "arbitor_training_state": wbytes["ternary_training_state"]}
    measured = model_variants(models, args)     # with --fuse both models fused too: the baseline takes it as well
    if args.profile:
        for linear, m in measured.items():
            try:
                res.setdefault("profile", {})[f"{linear}_b1"] = _profile(m, 1, args.prompt, device)
            except Exception as exc:
                traceback.print_exc()
                res.setdefault("errors", []).append(f"profile {linear}: {exc!r}")
        flush()
    compile_batches = {int(b) for b in args.compile_batches.split(",") if b} if args.compile else set()
    for batch in args.batches:
        tps, outs = {}, {}
        modes = [("graph", False, None)]
        if batch in compile_batches:    # the compiled step, and a variant of both models per set of Inductor options
            modes += [("compile+graph", True, None)]
            modes += [(f"compile+graph+{name}", True, opts) for name, opts in args.inductor_options]
        for linear, m in measured.items():
            for mode, comp, options in modes:
                key = f"{linear}/{mode}"
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                try:
                    tps[key], outs[key], table = _graphed_tps(m, batch, args.prompt, args.new, args.decode_reps,
                                                              device, compile=comp, profile=args.profile_fast,
                                                              compile_options=options)
                    if table is not None:
                        res.setdefault("profile", {})[f"{key}_b{batch} replay"] = table
                except Exception as exc:
                    traceback.print_exc()
                    tps[key] = None
                    res.setdefault("errors", []).append(f"decode {key} b{batch}: {exc!r}"[:400])
                print(f"decode {key} b{batch}: {tps[key]} tokens/s ({time.perf_counter() - t0:.0f}s)", flush=True)
                if device.type == "cuda":
                    res.setdefault("peak_bytes", {})[f"{key}_b{batch}"] = torch.cuda.max_memory_allocated()
        eager = None
        if args.eager_new:
            m = models["ternary"]
            idx = prompt_ids(m, batch, args.prompt, device)
            m.generate(idx, 2, temperature=0)
            _sync(device)
            t0 = time.perf_counter()
            m.generate(idx, 1, temperature=0)
            _sync(device)
            t1 = time.perf_counter()
            m.generate(idx, 1 + args.eager_new, temperature=0)
            _sync(device)
            eager = batch * args.eager_new / max(1e-9, (time.perf_counter() - t1) - (t1 - t0))
            # the tokens to compare: the same model's static-cache step eagerly, over a cache of the fast path's
            # length (``generate`` sizes its cache to prompt + new: another attention shape, rounded otherwise in
            # bf16); fused projections are another model (other kernels, other roundings): their own eager path
            refs = {name: GraphedDecoder(m, batch, args.prompt + args.new, cuda_graph=False).generate(
                idx, 1 + args.eager_new, temperature=0) for name, m in measured.items() if name.startswith("ternary")}
            for key, o in outs.items():        # greedy tokens of each fast path vs its model's eager path
                if key.startswith("ternary") and o is not None:
                    ref = refs[key.split("/")[0]]
                    same = (o[:, :ref.shape[1]] == ref)[:, args.prompt:].all(0)
                    res.setdefault("fast_vs_eager_tokens", {})[f"{key}_b{batch}"] = (
                        f"{int(same.long().cumprod(0).sum())}/{same.numel()} leading tokens equal")
        (ka, a), (kb, b) = fastest(tps, "ternary"), fastest(tps, "dense")
        row = {"name": f"decode_{name}_b{batch}", "shape": f"{name} preset, batch {batch}, {args.prompt}-token "
               f"prompt, {args.new} new (greedy; decode steps only)",
               "arbitor_ms": 1000 * batch / a if a else None,
               "arbitor": f"frozen model (arbitor.for_inference), static KV cache, {ka or '-'}",
               "baseline": f"same architecture, dense bf16 weights, static KV cache, {kb or '-'} "
                           "(the fastest of its variants)",
               "baseline_ms": 1000 * batch / b if b else None, "ratio": a / b if a and b else None,
               "arbitor_tokens_per_s": a, "baseline_tokens_per_s": b, "arbitor_eager_tokens_per_s": eager,
               "variants_tokens_per_s": tps,
               "arbitor_weight_bytes": wbytes["ternary"], "baseline_weight_bytes": wbytes["dense"],
               "weight_memory_ratio": wbytes["ternary"] / wbytes["dense"]}
        res["rows"].append(row)
        print(row, flush=True)
        flush()


# ----------------------------------------------------------------------------- output
def write(res, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tag = res["device"]
    (out / f"{tag}.json").write_text(json.dumps(res, indent=1))

    def f(v, spec=".3f"):
        return "-" if v is None else format(v, spec)
    lines = [f"# Decode speed ({tag})", "", f"Command: `{res['command']}` ({res['threads']} threads)", ""]
    gemv = [r for r in res["rows"] if r["name"].startswith("gemv")]
    if gemv:
        lines += ["GEMV rows: `arbitor ms` is a frozen layer (`arbitor.for_inference`: `T_packed` + float32 `S`, "
                  "in the `tc` layout that it gives layers on CUDA, `format.tc_tiles`) as the library launches it "
                  "(on sm_90+ a programmatic dependent launch: in the harness's chain of "
                  "calls each launch overlaps the call before it, as in a decode step; cuBLAS's calls do not); "
                  "`no PDL ms` the same kernel launched plainly (its own time) and `ratio no PDL` cuBLAS ms over it; "
                  "`rows ms` the same layer in the row layout, as launched; "
                  "`training layer ms` the same call on a trained layer's state (`E` + `corr_accum`); `before tc ms` "
                  "the frozen layer's kernels before `decode_tc` (the CUDA-core GEMV at one row, `decode_mma_kernel` "
                  "above). ratio = cuBLAS ms / arbitor ms; bound = the frozen layer's bytes at the HBM rate; read "
                  "floor = a kernel that only reads those bytes, in the same harness (`benchmarks/_read_floor.py`; "
                  "the fastest of its grids), and ceiling = cuBLAS ms / read floor ms, the ratio a GEMV at the read "
                  "floor would reach.", "",
                  "| row | shape | arbitor ms | no PDL ms | rows ms | before tc ms | training layer ms | "
                  "cuBLAS bf16 ms | ratio | ratio no PDL | bound ms | of bound | read floor ms | ceiling |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['name']} | {r['shape']} | {f(r['arbitor_ms'], '.4f')} | "
                  f"{f(r.get('frozen_no_pdl_ms'), '.4f')} | {f(r.get('frozen_rows_ms'), '.4f')} | "
                  f"{f(r.get('frozen_before_tc_ms'), '.4f')} | "
                  f"{f(r.get('training_layer_ms'), '.4f')} | {f(r['baseline_ms'], '.4f')} | {f(r['ratio'], '.2f')}x | "
                  f"{f(r.get('ratio_no_pdl'), '.2f')}{'x' if r.get('ratio_no_pdl') else ''} | "
                  f"{f(r['bound_ms'], '.4f')} | {f(r['of_bound'], '.2f')} | {f(r.get('read_floor_ms'), '.4f')} | "
                  f"{f(r.get('floor_ratio'), '.2f')}{'x' if r.get('floor_ratio') else ''} |" for r in gemv]
        launch = [r["launch_floor_ms"] for r in gemv if r.get("launch_floor_ms")]
        if launch:
            lines += ["", f"A launch that writes one word a program costs {1000 * min(launch):.2f}-"
                      f"{1000 * max(launch):.2f} us in the same harness (`launch_floor_ms`)."]
        lines.append("")
    dec = [r for r in res["rows"] if r["name"].startswith("decode")]
    if dec:
        lines += ["| row | arbitor tokens/s | dense tokens/s | ratio | variants (tokens/s) |",
                  "|---|---:|---:|---:|---|"]
        lines += [f"| {r['shape']} | {f(r['arbitor_tokens_per_s'], ',.0f')} | "
                  f"{f(r['baseline_tokens_per_s'], ',.0f')} | {f(r['ratio'], '.2f')}x | "
                  + ", ".join(f"{k} {f(v, ',.0f')}" for k, v in r.get("variants_tokens_per_s", {}).items()) + " |"
                  for r in dec]
    if "weight_bytes" in res:
        wb = res["weight_bytes"]
        lines += ["", f"Weight memory: arbitor {wb['arbitor'] / 2 ** 30:.2f} GiB, dense bf16 "
                  f"{wb['dense_bf16'] / 2 ** 30:.2f} GiB ({wb['arbitor'] / wb['dense_bf16']:.3f}x)"
                  + (f"; the trained model's state before `for_inference`: "
                     f"{wb['arbitor_training_state'] / 2 ** 30:.2f} GiB" if "arbitor_training_state" in wb else "")
                  + "."]
    for a in res.get("attention", []):
        lines += ["", f"Token-step attention, batch {a['B']}, {a['H']} heads x {a['hd']}, cache {a['L']} "
                  f"({a['kv_bytes'] / 2 ** 20:.1f} MiB of K and V; CUDA-graph replays, copies rotated past L2):", "",
                  "| path | us | K+V TB/s |", "|---|---:|---:|"]
        lines += [f"| {k} | {1000 * v:.1f} | {a['kv_bytes'] / (v * 1e9):.2f} |" for k, v in a["ms"].items()]
    if res.get("fast_vs_eager_tokens"):
        lines += ["", "Greedy tokens, fast path against the same model's static-cache step run eagerly (a cache of "
                  "the fast path's length): "
                  + ", ".join(f"{k}: {v}" for k, v in res["fast_vs_eager_tokens"].items()) + "."]
    for key, prof in res.get("profile", {}).items():
        what = "graph replays of the token step" if key.endswith("replay") else "eager token step"
        lines += ["", f"Profile `{key}` ({what}, torch.profiler): {prof['gpu_us_per_step']:,.0f} us of GPU "
                  f"time in {prof['kernels_per_step']:.0f} kernels per step", "",
                  "| kernel | calls/step | us/step |", "|---|---:|---:|"]
        lines += [f"| `{r['kernel']}` | {r['calls_per_step']:.0f} | {r['us_per_step']:.1f} |" for r in prof["top"]]
    if res.get("sweep"):
        lines += ["", "Sweep of the decode kernels' launch configs (fastest per shape, M and kernel path):", "",
                  "| M | K | N | path | BLOCK_N (tc: R x 16 a warp) | BLOCK_K | warps | programs/SM | ms | TB/s |",
                  "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        keys = sorted({(r["M"], r["K"], r["N"], r["path"]) for r in res["sweep"]})
        for key in keys:
            cands = [r for r in res["sweep"] if r["ms"] and (r["M"], r["K"], r["N"], r["path"]) == key]
            if cands:
                r = min(cands, key=lambda r: r["ms"])
                tc_keys = ("R", "AHEAD", "X_AHEAD", "WARP_SPLIT", "GROUP_COLUMNS", "L2_PREFETCH", "RING")
                bn = (r["BLOCK_N"] if "BLOCK_N" in r else ", ".join(f"{k} = {int(r[k])}" for k in tc_keys if k in r))
                lines.append(f"| {r['M']} | {r['K']} | {r['N']} | {key[3]} | {bn} | {r.get('BLOCK_K', '-')} | "
                             f"{r['num_warps']} | {r['PROGRAMS_PER_SM']} | {r['ms']:.4f} | {f(r['tbps'], '.2f')} |")
    if res.get("errors"):
        lines += ["", "Errors:", ""] + [f"* {e}" for e in res["errors"]]
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None, help="decode rows' preset (default: 3b on CUDA, small on the CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--parts", default=None, help="comma list of gemv, decode, attention, sweep (default: gemv,decode "
                    "on CUDA, decode on the CPU)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default: 512 on CUDA, 64 on the CPU)")
    ap.add_argument("--new", type=int, default=None, help="new tokens (default: 64 on CUDA, 32 on the CPU)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default: 20 on CUDA, 3 on the CPU)")
    ap.add_argument("--decode-reps", type=int, default=5, help="repetitions of each decode measurement")
    ap.add_argument("--gemv-m", default="1,4,16")
    ap.add_argument("--gemv-shapes", default=",".join(f"{k}:{n}" for k, n in GEMV_SHAPES),
                    help="--parts gemv / sweep: comma list of K:N (in_features:out_features; K a multiple of 256) "
                         "(default: the inference issue's four)")
    ap.add_argument("--eager-new", type=int, default=8, help="GPU: tokens of the eager arbitor reference (0: skip)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="decode rows: also measure the compiled token step for both models (GPU: compile + graph)")
    ap.add_argument("--compile-batches", default="1", help="the batch sizes --compile applies to (each compile of "
                    "the 3b step takes a minute or more)")
    ap.add_argument("--fuse", action="store_true",
                    help="decode rows: also measure both models with fused q/k/v/gate projections "
                         "(for_inference(fuse_projections=True)) as the variants 'ternary-fused' and 'dense-fused'")
    ap.add_argument("--models", default=None,
                    help="decode rows: comma list of the models to measure among ternary, dense (and, with "
                         "--fuse, ternary-fused, dense-fused); default all")
    ap.add_argument("--inductor-pdl", action="store_true",
                    help="GPU decode rows: the variant 'compile+graph+pdl' of each model (--inductor-options "
                         "pdl:triton.enable_pdl=true); the same as 'compile+graph' since decode.COMPILE_OPTIONS "
                         "turns Inductor's programmatic dependent launch on (kept for the recorded commands)")
    ap.add_argument("--inductor-options", action="append", default=[], type=inductor_variant,
                    metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="decode rows: also the compiled step with these Inductor options, variant "
                         "'compile+graph+NAME' of each model (repeatable; e.g. combo:combo_kernels=true)")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                    help="GPU decode rows: torch.profiler kernel table of an eager token step of both models")
    ap.add_argument("--profile-fast", action="store_true",
                    help="GPU decode rows: also the kernel table of each fast path's graph replays")
    ap.add_argument("--sweep-paths", default=",".join(SWEEP_PATHS),
                    help="--parts sweep: comma list of " + ", ".join(f"{k} ({v})" for k, v in SWEEP_PATHS.items()))
    ap.add_argument("--sweep-limit-s", type=float, default=240.0, help="--parts sweep: stop after this long")
    ap.add_argument("--sweep-tc-grid", choices=("full", "warp-split", "group-columns", "group-columns-ahead",
                                                "prefetch", "ring"), default="full",
                    help="--parts sweep, path tc: the launch grid (warp-split: WARP_SPLIT configs and the default; "
                         "group-columns: GROUP_COLUMNS configs at one row and the default; group-columns-ahead: "
                         "those with 2-3 chunks of weights in flight, and both default tiles; prefetch: the default "
                         "tiles with each L2_PREFETCH; ring: words and scales through a shared-memory ring of RING "
                         "slots, and the default tiles)")
    ap.add_argument("--l2-mb", type=int, default=60)
    ap.add_argument("--hbm-tbps", type=float, default=4.8)
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results" / "inference"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.preset = args.preset or ("3b" if cuda else "small")
    args.prompt = args.prompt if args.prompt is not None else (512 if cuda else 64)
    args.new = args.new if args.new is not None else (64 if cuda else 32)
    args.reps = args.reps if args.reps is not None else (20 if cuda else 3)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.gemv_m = [int(m) for m in args.gemv_m.split(",")]
    args.gemv_shapes = gemv_shapes(args.gemv_shapes)
    args.models = args.models.split(",") if args.models else None
    known = ["ternary", "dense"] + (["ternary-fused", "dense-fused"] if args.fuse else [])
    if args.models and not set(args.models) <= set(known):
        raise SystemExit(f"--models: comma list of {', '.join(known)} (the fused ones need --fuse); got "
                         f"{','.join(args.models)!r}")
    if args.models and not all(any(m.startswith(side) for m in args.models) for side in ("ternary", "dense")):
        raise SystemExit(f"--models: a row needs a ternary and a dense model; got {','.join(args.models)!r}")
    if args.inductor_pdl:      # --inductor-pdl: the variant 'pdl' of --inductor-options, first
        args.inductor_options.insert(0, ("pdl", {"triton.enable_pdl": True}))
    names = [name for name, _ in args.inductor_options]
    if len(set(names)) < len(names):
        raise SystemExit(f"--inductor-options: each variant needs its own name (--inductor-pdl takes 'pdl'); got "
                         f"{', '.join(names)}")
    args.sweep_paths = args.sweep_paths.split(",")
    if not set(args.sweep_paths) <= set(SWEEP_PATHS):
        raise SystemExit(f"--sweep-paths: comma list of {', '.join(SWEEP_PATHS)}; got {','.join(args.sweep_paths)!r}")
    parts = (args.parts or ("gemv,decode" if cuda else "decode")).split(",")
    if not set(parts) <= {"gemv", "decode", "sweep", "attention"}:
        raise SystemExit(f"--parts: comma list of gemv, decode, sweep, attention; got {args.parts!r}")
    # nothing here needs autograd (a caller's grad mode is left as it was); a compiled step past Dynamo's recompile
    # limit fails its variant instead of running uncompiled under the compiled variant's name
    with torch.no_grad(), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        return _run(args, device, parts, argv)


def _run(args, device, parts: list[str], argv) -> int:
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    tag = device_tag(name)
    res = {"device": tag, "device_name": name, "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(),
           "command": "PYTHONPATH=. python benchmarks/bench_decode.py " + " ".join(
               argv if argv is not None else sys.argv[1:]), "rows": []}
    out = Path(args.out_dir)

    def flush():
        write(res, out)
    t0 = time.perf_counter()
    if "sweep" in parts:
        if not cuda:
            raise SystemExit("--parts sweep needs a CUDA device")
        sweep_rows(args, device, res, flush)
        print(f"sweep done in {time.perf_counter() - t0:.0f}s", flush=True)
    if "gemv" in parts:
        if not cuda:
            raise SystemExit("--parts gemv needs a CUDA device")
        gemv_rows(args, device, res, flush)
        print(f"gemv rows done in {time.perf_counter() - t0:.0f}s", flush=True)
    if "attention" in parts:
        if not cuda:
            raise SystemExit("--parts attention needs a CUDA device")
        attention_rows(args, device, res, flush)
    if "decode" in parts:
        (gpu_decode_rows if cuda else cpu_decode_rows)(args, device, res, flush)
    res["wall_s"] = time.perf_counter() - t0
    flush()
    print((out / f"{tag}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

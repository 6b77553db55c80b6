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
  ``--reps`` times: per-call device time, no Python launch overhead, weights from HBM.
* ``decode_<preset>_b1`` / ``_b16``: greedy decode tokens/s of ``--new`` tokens after a ``--prompt``-token
  prompt. GPU (``--preset 3b`` by default): both models built on the meta device and materialised with random
  weights on the GPU (``bench_speed._build``), arbitor ternary against ``linear="dense"`` bf16, both through
  ``arbitor.model.decode.GraphedDecoder`` (static KV cache, one token step replayed as a CUDA graph; the
  prefill and the first step are excluded from the timing); arbitor's eager ``generate`` is recorded beside
  it, and both models' weight bytes. CPU (``--preset small``): ``ArbitorLM.generate`` eagerly for both,
  dense float32 (the rows of ``results/inference/cpu.json``).

Partial results are written after every row.

    PYTHONPATH=. python benchmarks/bench_decode.py --preset small --device cpu
    PYTHONPATH=. python benchmarks/bench_decode.py --device cuda --out-dir $OUT      # H200: ~3 minutes
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitor.model.config import preset  # noqa: E402
from arbitor.model.text import ArbitorLM  # noqa: E402
from arbitor.ternary.audit import ternary_audit  # noqa: E402
from benchmarks._device import device_tag  # noqa: E402

GEMV_SHAPES = [(4096, 4096), (8192, 8192), (3072, 12288), (12288, 3072)]


# ----------------------------------------------------------------------------- CPU rows (eager generate)
def tokens_per_s(model, batch: int, prompt: int, new: int, device, reps: int) -> float:
    idx = torch.randint(0, model.cfg.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0))
    idx = idx.to(device)
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
    dtype = "float32"
    models = {}
    for linear in ("ternary", "dense"):
        torch.manual_seed(0)
        cfg = preset(args.preset, linear=linear, compute_dtype=dtype, max_ctx=max(256, args.prompt + args.new))
        models[linear] = ArbitorLM(cfg).to(device).eval()
    res["weights"] = ternary_audit(models["ternary"])["logical_ternary_weights"]
    for batch in args.batches:
        tps = {k: tokens_per_s(m, batch, args.prompt, args.new, device, args.reps) for k, m in models.items()}
        row = {"name": f"decode_{args.preset}_b{batch}", "shape": f"{args.preset} preset, batch {batch}, "
               f"{args.prompt}-token prompt, {args.new} new", "arbitor_ms": 1000 * batch / tps["ternary"],
               "baseline": f"same architecture, dense {dtype} weights, KV cache, eager",
               "baseline_ms": 1000 * batch / tps["dense"], "ratio": tps["ternary"] / tps["dense"],
               "arbitor_tokens_per_s": tps["ternary"], "baseline_tokens_per_s": tps["dense"]}
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
    out = []
    shifts = torch.tensor([0, 2, 4, 6], device=device, dtype=torch.uint8)
    for _ in range(n):
        codes = torch.randint(0, 3, (N, K // 4, 4), device=device, dtype=torch.uint8)
        T_packed = (codes << shifts).sum(-1, dtype=torch.uint8)
        E = torch.randint(-7, -5, (N, K // gs), device=device, dtype=torch.int8)
        corr = torch.randint(-100, 101, (N, K // gs), device=device, dtype=torch.int64)
        out.append((T_packed, E, corr, torch.tensor(8, dtype=torch.int64, device=device),
                    torch.zeros((), dtype=torch.int64, device=device)))
    return out


def gemv_rows(args, device, res, flush) -> None:
    from arbitor.ternary.ops import linear_triton
    gs, l2_bytes = 64, args.l2_mb * 2 ** 20
    for K, N in GEMV_SHAPES:
        t_bytes = N * K // 4 + N * (K // gs) * (1 + 8)            # T_packed + E (int8) + corr_accum (int64)
        w_bytes = N * K * 2
        n_t = max(2, math.ceil(4 * l2_bytes / t_bytes))
        n_w = max(2, math.ceil(4 * l2_bytes / w_bytes))
        states = _ternary_copies(N, K, gs, n_t, device)
        Ws = [torch.randn(N, K, device=device, dtype=torch.bfloat16) / math.sqrt(K) for _ in range(n_w)]
        for M in args.gemv_m:
            x = torch.randn(M, K, device=device, dtype=torch.bfloat16)
            times = {"gemv": None}                        # the GEMV is M = 1 only
            for path in ("auto", "fused") + (("gemv",) if M == 1 else ()):
                try:
                    times[path] = _graph_time([
                        (lambda s=s, p=path: linear_triton.ternary_forward(x, *s, K, gs, 4.0, path=p))
                        for s in states], args.reps)
                except Exception as exc:   # one failing variant must not cost the run
                    traceback.print_exc()
                    times[path] = None
                    res.setdefault("errors", []).append(f"gemv M={M} K={K} N={N} path={path}: {exc!r}")
            base = _graph_time([(lambda W=W: x @ W.t()) for W in Ws], args.reps)
            bound_ms = 1000 * t_bytes / (args.hbm_tbps * 1e12)
            ms = times["auto"]
            row = {"name": f"gemv_m{M}", "shape": f"M={M}, K={K}, N={N}, bf16, group 64", "arbitor_ms": ms,
                   "baseline": f"cuBLAS bf16 x @ W.T (weights rotated over {n_w} copies)", "baseline_ms": base,
                   "ratio": base / ms if ms else None, "bound_ms": bound_ms,
                   "bound_note": f"(T_packed + E + corr_accum) bytes / {args.hbm_tbps} TB/s",
                   "of_bound": bound_ms / ms if ms else None,
                   "arbitor_tbps": t_bytes / (ms * 1e9) if ms else None,
                   "baseline_tbps": w_bytes / (base * 1e9),
                   "arbitor_gemv_ms": times["gemv"], "arbitor_fused_ms": times["fused"],
                   "ternary_copies": n_t, "dispatch": "gemv" if M == 1 else "fused"}
            res["rows"].append(row)
            print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            flush()
        del states, Ws
        gc.collect()
        torch.cuda.empty_cache()


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


def _graphed_tps(model, batch: int, prompt: int, new: int, reps: int, device) -> tuple[float, torch.Tensor]:
    from arbitor.model.decode import GraphedDecoder
    idx = torch.randint(0, model.cfg.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0))
    idx = idx.to(device)
    dec = GraphedDecoder(model, batch, prompt + new, cuda_graph=device.type == "cuda")
    out = dec.generate(idx, new, temperature=0)                 # capture
    best = float("inf")
    for _ in range(reps):
        dec.generate(idx, new, temperature=0)
        best = min(best, dec.timings["decode_s"] / dec.timings["decode_tokens"])
    del dec
    return 1.0 / best, out


def gpu_decode_rows(args, device, res, flush) -> None:
    from benchmarks.bench_speed import _build
    name = args.preset
    models, wbytes = {}, {}
    for linear in ("ternary", "dense"):
        cfg = preset(name, linear=linear, compute_dtype="bfloat16", max_ctx=args.prompt + args.new,
                     activation_checkpointing=False)
        t = time.perf_counter()
        models[linear] = _build(cfg, device).eval()
        wbytes[linear] = _weight_bytes(models[linear])
        print(f"built {name} {linear} in {time.perf_counter() - t:.1f}s, {wbytes[linear] / 2 ** 30:.2f} GiB",
              flush=True)
    res["weight_bytes"] = {"arbitor": wbytes["ternary"], "dense_bf16": wbytes["dense"]}
    torch.set_grad_enabled(False)
    for batch in args.batches:
        tps, outs = {}, {}
        for linear, m in models.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                tps[linear], outs[linear] = _graphed_tps(m, batch, args.prompt, args.new, args.decode_reps, device)
            except Exception as exc:
                traceback.print_exc()
                tps[linear] = None
                res.setdefault("errors", []).append(f"decode {linear} b{batch}: {exc!r}")
            if device.type == "cuda":
                res.setdefault("peak_bytes", {})[f"{linear}_b{batch}"] = torch.cuda.max_memory_allocated()
        eager = None
        if args.eager_new:
            idx = torch.randint(0, 256, (batch, args.prompt), generator=torch.Generator().manual_seed(0)).to(device)
            m = models["ternary"]
            m.generate(idx, 2, temperature=0)
            _sync(device)
            t0 = time.perf_counter()
            m.generate(idx, 1, temperature=0)
            _sync(device)
            t1 = time.perf_counter()
            ref = m.generate(idx, 1 + args.eager_new, temperature=0)
            _sync(device)
            eager = batch * args.eager_new / max(1e-9, (time.perf_counter() - t1) - (t1 - t0))
            if outs.get("ternary") is not None:      # greedy tokens of the graphed path vs the eager path
                same = (outs["ternary"][:, :ref.shape[1]] == ref)[:, args.prompt:].all(0)
                res.setdefault("graph_vs_eager_tokens", {})[f"b{batch}"] = (
                    f"{int(same.long().cumprod(0).sum())}/{same.numel()} leading tokens equal")
        a, b = tps.get("ternary"), tps.get("dense")
        row = {"name": f"decode_{name}_b{batch}", "shape": f"{name} preset, batch {batch}, {args.prompt}-token "
               f"prompt, {args.new} new (greedy; decode steps only)",
               "arbitor_ms": 1000 * batch / a if a else None,
               "baseline": "same architecture, dense bf16 weights, static KV cache, CUDA graph",
               "baseline_ms": 1000 * batch / b if b else None, "ratio": a / b if a and b else None,
               "arbitor_tokens_per_s": a, "baseline_tokens_per_s": b, "arbitor_eager_tokens_per_s": eager,
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
        lines += ["| row | shape | arbitor ms | gemv / fused ms | cuBLAS bf16 ms | ratio | bound ms | of bound |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['name']} | {r['shape']} | {f(r['arbitor_ms'], '.4f')} | {f(r['arbitor_gemv_ms'], '.4f')} / "
                  f"{f(r['arbitor_fused_ms'], '.4f')} | {f(r['baseline_ms'], '.4f')} | {f(r['ratio'], '.2f')}x | "
                  f"{f(r['bound_ms'], '.4f')} | {f(r['of_bound'], '.2f')} |" for r in gemv]
        lines.append("")
    dec = [r for r in res["rows"] if r["name"].startswith("decode")]
    if dec:
        lines += ["| row | arbitor tokens/s | dense tokens/s | ratio |", "|---|---:|---:|---:|"]
        lines += [f"| {r['shape']} | {f(r['arbitor_tokens_per_s'], ',.0f')} | "
                  f"{f(r['baseline_tokens_per_s'], ',.0f')} | {f(r['ratio'], '.2f')}x |" for r in dec]
    if "weight_bytes" in res:
        wb = res["weight_bytes"]
        lines += ["", f"Weight memory: arbitor {wb['arbitor'] / 2 ** 30:.2f} GiB, dense bf16 "
                  f"{wb['dense_bf16'] / 2 ** 30:.2f} GiB ({wb['arbitor'] / wb['dense_bf16']:.3f}x)."]
    if res.get("errors"):
        lines += ["", "Errors:", ""] + [f"* {e}" for e in res["errors"]]
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None, help="decode rows' preset (default: 3b on CUDA, small on the CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--parts", default=None, help="comma list of gemv,decode (default: both on CUDA, decode on CPU)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default: 512 on CUDA, 64 on the CPU)")
    ap.add_argument("--new", type=int, default=None, help="new tokens (default: 64 on CUDA, 32 on the CPU)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default: 20 on CUDA, 3 on the CPU)")
    ap.add_argument("--decode-reps", type=int, default=5, help="repetitions of each decode measurement")
    ap.add_argument("--gemv-m", default="1,4,16")
    ap.add_argument("--eager-new", type=int, default=8, help="GPU: tokens of the eager arbitor reference (0: skip)")
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
    parts = (args.parts or ("gemv,decode" if cuda else "decode")).split(",")
    torch.set_grad_enabled(False)
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
    if "gemv" in parts:
        if not cuda:
            raise SystemExit("--parts gemv needs a CUDA device")
        gemv_rows(args, device, res, flush)
        print(f"gemv rows done in {time.perf_counter() - t0:.0f}s", flush=True)
    if "decode" in parts:
        (gpu_decode_rows if cuda else cpu_decode_rows)(args, device, res, flush)
    res["wall_s"] = time.perf_counter() - t0
    flush()
    print((out / f"{tag}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

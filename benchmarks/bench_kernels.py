"""Benchmark the Triton ternary kernels against cuBLAS bf16 and the torch reference backend.

Usage (CUDA machine)::

    PYTHONPATH=. python benchmarks/bench_kernels.py [--dtype bf16] [--group-size 64]
                                                    [--out-dir benchmarks/results/kernels]
                                                    [--quick] [--no-torch-ref] [--device-name h100]

Writes ``<out-dir>/<device>.json`` and ``<out-dir>/<device>.md`` (``--sign-agreement``:
``<out-dir>/sign-agreement-<device>.json``).

For each shape ``(M, K, N)``:

* ``forward``   ternary ``y = x @ W_eff.T``   vs cuBLAS ``x @ W.T`` (bf16, same M, K, N)
  (``arbitor.ternary.ops.linear_triton.ternary_forward``)
* ``grad_x``    ternary ``grad_y @ W_eff``    vs cuBLAS ``grad_y @ W`` (``linear_triton.ternary_grad_x``)
* ``corr``      direct correlation votes into ``corr_accum`` vs cuBLAS weight-gradient GEMM ``grad_y.T @ x``
  (``arbitor.ternary.ops.votes_triton.ternary_correlation_``)
* ``torch_ref`` the torch reference backend for the same op (training shapes: forward, ``linear.linear_forward_torch``,
  and backward, ``linear.linear_grad_x_torch`` + ``votes.bigint_votes_torch_``)

Times are ``triton.testing.do_bench_cudagraph`` medians (ms): the op is captured in a CUDA
graph and replayed, so Python launch overhead is excluded for both sides (decode rows also
give the eager per-call time, ``do_bench`` median, which includes it). TFLOP/s counts ``2*M*N*K`` flops, and
for decode shapes (M <= 16) GB/s counts the bytes each kernel must read/write once
(ternary: ``T_packed`` + ``E`` + ``corr_accum`` + activations; bf16: ``W`` + activations).
``ratio`` is ternary throughput / cuBLAS throughput (> 1: ternary faster); for ``corr`` it is
also reported as ``time / cuBLAS time`` (target <= 1.2).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._device import device_tag  # noqa: E402

TRAIN_SHAPES = [(4096, 2048, 2048), (4096, 4096, 4096), (8192, 4096, 4096), (16384, 8192, 8192), (8192, 2048, 8192)]
DECODE_SHAPES = [(m, k, n) for (k, n) in [(4096, 4096), (8192, 8192), (2048, 8192)] for m in (1, 4, 16)]
QUICK_TRAIN = [(4096, 4096, 4096), (16384, 8192, 8192)]
QUICK_DECODE = [(m, 4096, 4096) for m in (1, 16)] + [(1, 8192, 8192)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"], help="activation dtype")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--out-dir",
                    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "kernels"))
    ap.add_argument("--device-name", default=None, help="tag used in the file names (default: from the GPU name)")
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--no-torch-ref", action="store_true", help="skip the torch reference backend")
    ap.add_argument("--rep", type=int, default=100, help="do_bench rep (ms)")
    ap.add_argument("--sign-agreement", action="store_true",
                    help="instead of timing: compare the triton votes with the torch reference on random data "
                         "and check run-to-run determinism; writes sign-agreement-<device>.json")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA device", file=sys.stderr)
        return 2
    import triton
    from triton.testing import do_bench, do_bench_cudagraph

    from arbitor.ternary.format import pack_ternary
    from arbitor.ternary.ops.linear import linear_forward_torch, linear_grad_x_torch
    from arbitor.ternary.ops.linear_triton import ternary_forward, ternary_grad_x
    from arbitor.ternary.ops.votes import bigint_votes_torch_
    from arbitor.ternary.ops.votes_triton import ternary_correlation_

    dev = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    gs = args.group_size
    gpu_name = torch.cuda.get_device_name(dev)
    tag = args.device_name or device_tag(gpu_name)
    train = QUICK_TRAIN if args.quick else TRAIN_SHAPES
    decode = QUICK_DECODE if args.quick else DECODE_SHAPES
    strength = 4.0
    pending = 1

    def bench(fn, rep=args.rep):
        fn()
        torch.cuda.synchronize()
        return do_bench_cudagraph(fn, rep=rep, return_mode="median")

    def bench_eager(fn, rep=args.rep):
        return do_bench(fn, warmup=25, rep=rep, return_mode="median")

    if args.sign_agreement:
        return sign_agreement(args, dev, tag, gpu_name)

    rows = []
    t_start = time.time()
    for (M, K, N) in train + decode:
        torch.manual_seed(0)
        t = torch.randint(-1, 2, (N, K), device=dev)
        T_packed = pack_ternary(t)
        E = torch.randint(-7, -4, (N, K // gs), device=dev, dtype=torch.int8)
        corr = torch.randint(-1000, 1000, (N, K // gs), device=dev, dtype=torch.int64)
        step = torch.tensor(100, dtype=torch.int64, device=dev)
        x = torch.randn(M, K, device=dev, dtype=dtype)
        gy = torch.randn(M, N, device=dev, dtype=dtype)
        W = torch.randn(N, K, device=dev, dtype=dtype)
        state = (T_packed, E, corr, step, pending, K, gs, strength)  # what every linear op reads
        flops = 2.0 * M * N * K
        decode_shape = M <= 16
        tern_bytes = N * K / 4 + N * (K // gs) * 9 + (M * K + M * N) * x.element_size()
        bf16_bytes = N * K * 2 + (M * K + M * N) * x.element_size()

        # correctness of the tuned kernels at this shape (vs the float32 torch reference on a row slice)
        y = ternary_forward(x, *state)
        sl = slice(0, min(M, 256))
        y_ref = linear_forward_torch(x[sl].float(), *state)
        fwd_err = ((y[sl].float() - y_ref).norm() / y_ref.norm()).item()
        del y, y_ref

        ops = {}
        ops["forward"] = (lambda: ternary_forward(x, *state), lambda: x @ W.t())
        ops["grad_x"] = (lambda: ternary_grad_x(gy, *state), lambda: gy @ W)
        if not decode_shape:
            c_scratch = torch.zeros_like(corr)
            ops["corr"] = (lambda: ternary_correlation_(gy, x, T_packed, c_scratch, K, gs),
                           lambda: gy.t() @ x)
        for name, (tern_fn, blas_fn) in ops.items():
            tern_fn()
            torch.cuda.synchronize()
            t_tern = bench(tern_fn)
            t_blas = bench(blas_fn)
            row = {"op": name, "M": M, "K": K, "N": N, "group_size": gs, "dtype": args.dtype,
                   "ternary_ms": t_tern, "cublas_bf16_ms": t_blas,
                   "ternary_tflops": flops / t_tern * 1e-9, "cublas_tflops": flops / t_blas * 1e-9,
                   "speed_ratio": t_blas / t_tern, "time_ratio": t_tern / t_blas}
            if decode_shape:
                row["ternary_gbps"] = tern_bytes / t_tern * 1e-6
                row["cublas_gbps"] = bf16_bytes / t_blas * 1e-6
                row["ternary_eager_ms"] = bench_eager(tern_fn)
                row["cublas_eager_ms"] = bench_eager(blas_fn)
            if name == "forward":
                row["rel_err_vs_ref"] = fwd_err
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not decode_shape and not args.no_torch_ref:
            c_ref = torch.zeros_like(corr)
            c_torch = torch.zeros_like(corr)  # votes go into scratch accumulators, never into the state `corr`
            # the torch reference backend is timed eagerly (do_bench), as it runs in a layer; backward = grad_x
            # then the votes, the two ops the layer's torch backward calls (bigint rule)
            t_ref_f = bench_eager(lambda: linear_forward_torch(x, *state), rep=20)
            t_ref_b = bench_eager(lambda: (linear_grad_x_torch(gy, *state),
                                           bigint_votes_torch_(gy, x, T_packed, c_torch, K, gs)), rep=20)
            t_tri_b = bench(lambda: (ternary_grad_x(gy, *state),
                                     ternary_correlation_(gy, x, T_packed, c_ref, K, gs)))
            row = {"op": "torch_ref", "M": M, "K": K, "N": N, "group_size": gs, "dtype": args.dtype,
                   "torch_forward_ms": t_ref_f, "torch_backward_ms": t_ref_b, "triton_backward_ms": t_tri_b,
                   "forward_speedup_vs_torch": t_ref_f / next(r["ternary_ms"] for r in rows
                                                              if r["op"] == "forward" and (r["M"], r["K"], r["N"]) == (M, K, N)),
                   "backward_speedup_vs_torch": t_ref_b / t_tri_b}
            rows.append(row)
            print(json.dumps(row), flush=True)
        # free this shape's tensors before the next one (rebinding, not ``del``: the timing lambdas close over them)
        t = T_packed = E = corr = x = gy = W = state = None
        torch.cuda.empty_cache()

    meta = {"device": gpu_name, "device_tag": tag, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "command": "PYTHONPATH=. python benchmarks/bench_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "timing": "triton.testing.do_bench_cudagraph median, rep %d ms (eager: do_bench median)" % args.rep,
            "autotune": os.environ.get("ARB_TRITON_AUTOTUNE", "1"), "wall_s": round(time.time() - t_start, 1),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"{tag}.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out_dir, f"{tag}.md"), "w") as f:
        f.write(to_markdown(meta, rows))
    print(to_markdown(meta, rows))
    return 0


def sign_agreement(args, dev, tag: str, gpu_name: str) -> int:
    """How often the Triton votes differ from the torch reference on random N(0,1) data.

    Both take ``sign`` of the same fp32 sums accumulated in a different order (the reference,
    ``votes.bigint_votes_torch_``: cuBLAS fp32 GEMM of the upcast inputs, TF32 off), so only sums
    within rounding error of 0 can disagree. Also checks that three Triton runs
    (``votes_triton.ternary_correlation_``) give identical votes.
    """
    import triton
    from arbitor.ternary.format import pack_ternary
    from arbitor.ternary.ops.votes import bigint_votes_torch_
    from arbitor.ternary.ops.votes_triton import ternary_correlation_
    torch.backends.cuda.matmul.allow_tf32 = False
    gs = args.group_size
    out = []
    for (M, K, N) in [(4096, 2048, 2048), (16384, 4096, 4096)]:
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            g = torch.Generator(device=dev).manual_seed(M + K)
            t = torch.randint(-1, 2, (N, K), device=dev, generator=g)
            T_packed = pack_ternary(t)
            x = torch.randn(M, K, device=dev, generator=g).to(dtype)
            gy = torch.randn(M, N, device=dev, generator=g).to(dtype)
            runs = []
            for _ in range(3):
                c = torch.zeros(N, K // gs, dtype=torch.int64, device=dev)
                ternary_correlation_(gy, x, T_packed, c, K, gs)
                runs.append(c)
            deterministic = all(torch.equal(runs[0], r) for r in runs[1:])
            ref = torch.zeros(N, K // gs, dtype=torch.int64, device=dev)
            bigint_votes_torch_(gy, x, T_packed, ref, K, gs)  # adds into zeros, so ref holds exactly the votes
            diff = (runs[0] - ref).abs()
            row = {"M": M, "K": K, "N": N, "group_size": gs, "dtype": str(dtype).replace("torch.", ""),
                   "deterministic_3_runs": deterministic,
                   "groups_differing_frac": (diff != 0).float().mean().item(),
                   "weights_flipped_lower_bound_frac": diff.sum().item() / (N * K),
                   "max_abs_vote_diff": int(diff.max()), "nonzero_weights_frac": (t != 0).float().mean().item()}
            print(json.dumps(row), flush=True)
            out.append(row)
    meta = {"device": gpu_name, "torch": torch.__version__, "triton": triton.__version__,
            "command": "PYTHONPATH=. python benchmarks/bench_kernels.py --sign-agreement",
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"sign-agreement-{tag}.json"), "w") as f:
        json.dump({"meta": meta, "rows": out}, f, indent=1)
    return 0


def to_markdown(meta: dict, rows: list[dict]) -> str:
    out = [f"# Ternary kernels on {meta['device']}", "",
           f"torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}; {meta['timing']}; "
           f"measured {meta['date_utc']} UTC.", "", f"Command: `{meta['command']}`", "",
           "## Training shapes", "",
           "| op | M | K | N | ternary ms | cuBLAS bf16 ms | ternary TFLOP/s | cuBLAS TFLOP/s | speed ratio | time ratio |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["op"] in ("forward", "grad_x", "corr") and r["M"] > 16:
            out.append(f"| {r['op']} | {r['M']} | {r['K']} | {r['N']} | {r['ternary_ms']:.3f} | {r['cublas_bf16_ms']:.3f} | "
                       f"{r['ternary_tflops']:.0f} | {r['cublas_tflops']:.0f} | {r['speed_ratio']:.2f}x | "
                       f"{r['time_ratio']:.2f} |")
    out += ["", "## Decode shapes (M <= 16)", "",
            "Kernel time (CUDA graph); eager = per-call time including Python launch overhead.", "",
            "| op | M | K | N | ternary us | cuBLAS bf16 us | ternary GB/s | cuBLAS GB/s | speedup vs bf16 | eager ternary / cuBLAS us |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["op"] in ("forward", "grad_x") and r["M"] <= 16:
            out.append(f"| {r['op']} | {r['M']} | {r['K']} | {r['N']} | {r['ternary_ms'] * 1e3:.1f} | "
                       f"{r['cublas_bf16_ms'] * 1e3:.1f} | {r['ternary_gbps']:.0f} | {r['cublas_gbps']:.0f} | "
                       f"{r['speed_ratio']:.2f}x | {r['ternary_eager_ms'] * 1e3:.0f} / "
                       f"{r['cublas_eager_ms'] * 1e3:.0f} |")
    refs = [r for r in rows if r["op"] == "torch_ref"]
    if refs:
        out += ["", "## Torch reference backend (same shapes)", "",
                "torch reference: eager `do_bench`; triton backward = grad-x + correlation kernels (CUDA graph).", "",
                "| M | K | N | torch fwd ms | torch bwd ms | triton bwd ms | fwd speedup | bwd speedup |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in refs:
            out.append(f"| {r['M']} | {r['K']} | {r['N']} | {r['torch_forward_ms']:.2f} | {r['torch_backward_ms']:.2f} | "
                       f"{r['triton_backward_ms']:.2f} | {r['forward_speedup_vs_torch']:.1f}x | "
                       f"{r['backward_speedup_vs_torch']:.1f}x |")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the Triton ternary ops against cuBLAS bf16 and the torch reference backend.

Usage (CUDA machine)::

    PYTHONPATH=. python benchmarks/bench_kernels.py [--dtype bf16] [--group-size 64]
                                                    [--out-dir benchmarks/results/kernels]
                                                    [--quick] [--no-torch-ref] [--device-name h100]

Writes ``<out-dir>/<device>.json`` and ``<out-dir>/<device>.md`` (``--sign-agreement``:
``<out-dir>/sign-agreement-<device>.json``).

Every ternary op is timed as a CUDA layer calls it: through the Triton ops table
(``arbitor.ternary.ops.backend.get_ops(device, "triton")``, the ``torch.library`` custom ops of
``arbitor.ternary.ops.library``). For each shape ``(M, K, N)``:

* ``forward``   ternary ``y = x @ W_eff.T``   vs cuBLAS ``x @ W.T`` (bf16, same M, K, N)
  (``arbitor.ternary.ops.linear_triton.ternary_forward``: up to ``FUSED_MAX_M`` = 16 rows the fused kernel with
  the fixed decode config, ``_decode_config``; above, ``expand_kernel`` writes ``W_eff`` in x's dtype and cuBLAS
  multiplies)
* ``grad_x``    ternary ``grad_y @ W_eff``    vs cuBLAS ``grad_y @ W`` (``linear_triton.ternary_grad_x``, same paths)
* ``ballot``    the ``bigint`` ballot (``arbitor::bigint_ballot_`` = ``votes_triton.bigint_ballot_triton_``:
  cuBLAS ``grad_W = grad_y.T @ x`` chunks in the activations' dtype + ``ballot_vote_kernel`` +
  ``apply_ballot_kernel``, votes into a scratch ``corr_accum``) vs the cuBLAS bf16 weight-gradient GEMM
  ``grad_y.T @ x`` alone (the GEMM a dense layer's backward runs anyway); training shapes only
* ``torch_ref`` the torch reference backend for the same ops (training shapes: forward, ``linear.linear_forward_torch``,
  and backward, ``linear.linear_grad_x_torch`` + ``votes.bigint_ballot_torch_``)

Each row records the path and the fixed launch config used (``path``, ``config``; the kernels have no autotuning).
Times are ``triton.testing.do_bench_cudagraph`` medians (ms): the op is captured in a CUDA
graph and replayed, so Python launch overhead is excluded for both sides (decode rows also
give the eager per-call time, ``do_bench`` median, which includes it). TFLOP/s counts ``2*M*N*K`` flops, and
for decode shapes (M <= 16) GB/s counts the bytes each kernel must read/write once
(ternary: ``T_packed`` + ``E`` + ``corr_accum`` + activations; bf16: ``W`` + activations).
``ratio`` is ternary throughput / cuBLAS throughput (> 1: ternary faster); for ``ballot`` it is
also reported as ``time / cuBLAS time`` (the ballot's cost over the bare ``grad_W`` GEMM).
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
SIGN_SHAPES = [(4096, 2048, 2048), (16384, 4096, 4096)]
STRENGTH = 4.0


def linear_launch(kind: str, M: int, K: int, N: int, dtype: torch.dtype, group_size: int,
                  device: torch.device) -> dict:
    """Path and fixed launch config of ``ternary_forward`` (``kind="fwd"``) / ``ternary_grad_x`` (``"gx"``) at this
    shape with ``path="auto"`` -- the same choice as ``linear_triton._fused`` / ``_launch_linear``."""
    import triton

    from arbitor.ternary.ops import linear_triton as lt
    from arbitor.ternary.ops import triton_common
    if M > lt.FUSED_MAX_M:
        bn, bk, warps = lt._expand_config(group_size)
        return {"path": "expand+cublas",
                "config": {"kernel": "expand_kernel", "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps}}
    fwd = kind == "fwd"
    out_cols, red = (N, K) if fwd else (K, N)
    out_block, red_block = ("BLOCK_N", "BLOCK_K") if fwd else ("BLOCK_K", "BLOCK_N")

    def out_tiles(c):
        return triton.cdiv(M, c["BLOCK_M"]) * triton.cdiv(out_cols, c[out_block])
    cfg = lt._pick_config(None, M, red, out_tiles, kind, dtype, device)
    _, cfg["SPLIT"] = triton_common.split_len(red, cfg.pop("SPLIT", 1), cfg[red_block])
    return {"path": "fused", "config": {"kernel": "ternary_fwd_kernel" if fwd else "ternary_gradx_kernel", **cfg}}


def ballot_launch(K: int, N: int, group_size: int) -> dict:
    """Path and fixed config of the Triton ``bigint`` ballot (``votes_triton.bigint_ballot_triton_``)."""
    from arbitor.ternary.ops.blocks import gradw_chunk_rows
    from arbitor.ternary.ops.votes_triton import _vote_config
    block_r, block_k = _vote_config(group_size)
    return {"path": "cublas grad_W + ballot_vote_kernel + apply_ballot_kernel",
            "config": {"kernel": "ballot_vote_kernel", "BLOCK_R": block_r, "BLOCK_K": block_k,
                       "gradw_chunk_rows": gradw_chunk_rows(N, K), "apply_BLOCK": 1024}}


def make_state(N: int, K: int, group_size: int, device: torch.device, generator=None):
    """Random layer state ``(T, T_packed, E, corr_accum, step_counter, pending)`` (``pending`` an int64 0-d tensor,
    as the layer's buffer)."""
    from arbitor.ternary.format import pack_ternary
    t = torch.randint(-1, 2, (N, K), device=device, generator=generator)
    E = torch.randint(-7, -4, (N, K // group_size), device=device, dtype=torch.int8, generator=generator)
    corr = torch.randint(-1000, 1000, (N, K // group_size), device=device, dtype=torch.int64, generator=generator)
    step = torch.tensor(100, dtype=torch.int64, device=device)
    pending = torch.tensor(1, dtype=torch.int64, device=device)
    return t, pack_ternary(t), E, corr, step, pending


def ballot_scratch(N: int, K: int, group_size: int, device: torch.device):
    """Zeroed ``(corr_accum, pending, nonfinite)`` a ballot can vote into without touching the layer state."""
    return (torch.zeros(N, K // group_size, dtype=torch.int64, device=device),
            torch.zeros((), dtype=torch.int64, device=device), torch.zeros((), dtype=torch.int64, device=device))


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
                    help="instead of timing: compare the Triton backend's ballot votes with the torch backend's "
                         "reference on random data, check run-to-run determinism and the non-finite skip; "
                         "writes sign-agreement-<device>.json")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    gpu_name = torch.cuda.get_device_name(dev)
    tag = args.device_name or device_tag(gpu_name)
    if args.sign_agreement:
        return sign_agreement(args, dev, tag, gpu_name)

    import triton
    from triton.testing import do_bench, do_bench_cudagraph

    from arbitor.ternary.ops.backend import get_ops
    from arbitor.ternary.ops.linear import linear_forward_torch, linear_grad_x_torch
    from arbitor.ternary.ops.votes import bigint_ballot_torch_

    ops = get_ops(dev, "triton")  # what a CUDA layer calls (TernaryScaleTensor._ops)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    gs = args.group_size
    train = QUICK_TRAIN if args.quick else TRAIN_SHAPES
    decode = QUICK_DECODE if args.quick else DECODE_SHAPES

    def bench(fn, rep=args.rep):
        fn()
        torch.cuda.synchronize()
        return do_bench_cudagraph(fn, rep=rep, return_mode="median")

    def bench_eager(fn, rep=args.rep):
        return do_bench(fn, warmup=25, rep=rep, return_mode="median")

    rows = []
    t_start = time.time()
    for (M, K, N) in train + decode:
        torch.manual_seed(0)
        _, T_packed, E, corr, step, pending = make_state(N, K, gs, dev)
        x = torch.randn(M, K, device=dev, dtype=dtype)
        gy = torch.randn(M, N, device=dev, dtype=dtype)
        W = torch.randn(N, K, device=dev, dtype=dtype)
        state = (T_packed, E, corr, step, pending, K, gs, STRENGTH)  # what every linear op reads
        flops = 2.0 * M * N * K
        decode_shape = M <= 16
        tern_bytes = N * K / 4 + N * (K // gs) * 9 + (M * K + M * N) * x.element_size()
        bf16_bytes = N * K * 2 + (M * K + M * N) * x.element_size()

        # correctness at this shape (vs the float32 torch reference on a row slice)
        y = ops.linear_forward(x, *state)
        sl = slice(0, min(M, 256))
        y_ref = linear_forward_torch(x[sl].float(), *state)
        fwd_err = ((y[sl].float() - y_ref).norm() / y_ref.norm()).item()
        del y, y_ref

        cases = {"forward": (lambda: ops.linear_forward(x, *state), lambda: x @ W.t(),
                             linear_launch("fwd", M, K, N, dtype, gs, dev)),
                 "grad_x": (lambda: ops.linear_grad_x(gy, *state), lambda: gy @ W,
                            linear_launch("gx", M, K, N, dtype, gs, dev))}
        if not decode_shape:
            c_s, p_s, nf_s = ballot_scratch(N, K, gs, dev)  # votes go into scratch, never into the state `corr`
            cases["ballot"] = (lambda: ops.bigint_ballot_(gy, x, T_packed, c_s, p_s, nf_s, K, gs),
                               lambda: gy.t() @ x, ballot_launch(K, N, gs))
        for name, (tern_fn, blas_fn, launch) in cases.items():
            tern_fn()
            torch.cuda.synchronize()
            t_tern = bench(tern_fn)
            t_blas = bench(blas_fn)
            row = {"op": name, "M": M, "K": K, "N": N, "group_size": gs, "dtype": args.dtype,
                   "ternary_ms": t_tern, "cublas_bf16_ms": t_blas,
                   "ternary_tflops": flops / t_tern * 1e-9, "cublas_tflops": flops / t_blas * 1e-9,
                   "speed_ratio": t_blas / t_tern, "time_ratio": t_tern / t_blas, **launch}
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
            c_t, p_t, nf_t = ballot_scratch(N, K, gs, dev)
            c_b, p_b, nf_b = ballot_scratch(N, K, gs, dev)
            # the torch reference backend is timed eagerly (do_bench), as it runs in a layer; backward = grad_x
            # then the ballot, the two ops the layer's backward calls (bigint rule)
            t_ref_f = bench_eager(lambda: linear_forward_torch(x, *state), rep=20)
            t_ref_b = bench_eager(lambda: (linear_grad_x_torch(gy, *state),
                                           bigint_ballot_torch_(gy, x, T_packed, c_t, p_t, nf_t, K, gs)), rep=20)
            t_tri_b = bench(lambda: (ops.linear_grad_x(gy, *state),
                                     ops.bigint_ballot_(gy, x, T_packed, c_b, p_b, nf_b, K, gs)))
            t_fwd = next(r["ternary_ms"] for r in rows
                         if r["op"] == "forward" and (r["M"], r["K"], r["N"]) == (M, K, N))
            row = {"op": "torch_ref", "M": M, "K": K, "N": N, "group_size": gs, "dtype": args.dtype,
                   "torch_forward_ms": t_ref_f, "torch_backward_ms": t_ref_b, "triton_backward_ms": t_tri_b,
                   "forward_speedup_vs_torch": t_ref_f / t_fwd, "backward_speedup_vs_torch": t_ref_b / t_tri_b}
            rows.append(row)
            print(json.dumps(row), flush=True)
        # free this shape's tensors before the next one (rebinding, not ``del``: the timing lambdas close over them)
        T_packed = E = corr = x = gy = W = state = cases = None
        c_s = c_t = c_b = None
        torch.cuda.empty_cache()

    meta = {"device": gpu_name, "device_tag": tag, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "command": "PYTHONPATH=. python benchmarks/bench_kernels.py "
                       + " ".join(argv if argv is not None else sys.argv[1:]),
            "timing": "triton.testing.do_bench_cudagraph median, rep %d ms (eager: do_bench median)" % args.rep,
            "configs": "fixed (no autotuning): each row's path and config", "wall_s": round(time.time() - t_start, 1),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"{tag}.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out_dir, f"{tag}.md"), "w") as f:
        f.write(to_markdown(meta, rows))
    print(to_markdown(meta, rows))
    return 0


def run_ballot(ops, gy: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, K: int, group_size: int):
    """One ballot of ``ops`` (a ``TernaryOps`` table) into zeroed scratch: ``(votes [N, G], pending, nonfinite)``."""
    c, p, nf = ballot_scratch(T_packed.shape[0], K, group_size, T_packed.device)
    ops.bigint_ballot_(gy, x, T_packed, c, p, nf, K, group_size)
    return c, int(p), int(nf)


def sign_agreement_rows(shapes, dtypes, group_size: int, device: torch.device) -> list[dict]:
    """How often the Triton backend's ballot votes differ from the torch backend's reference on random N(0,1) data.

    Both tables' ``bigint_ballot_`` (``get_ops(device, "triton")``, ``TORCH_OPS``) vote on the same inputs into
    zeroed ``corr_accum`` scratch. The Triton op (``votes_triton.bigint_ballot_triton_``) takes ``sign`` of a
    cuBLAS ``grad_W`` in the activations' dtype (fp32 accumulation inside the GEMM, rounded to the dtype on
    output); the reference (``votes.bigint_ballot_torch_``) of a cuBLAS fp32 GEMM of the upcast inputs (TF32 off
    here), in other row blocks -- the same sums in a different order, so only sums within rounding of 0 can
    disagree. Also checks that three Triton ballots give identical votes, each counted once in ``pending``, and
    that a ballot with a NaN in ``x`` votes nowhere and is counted in ``nonfinite`` on both backends.
    """
    from arbitor.ternary.format import pack_ternary
    from arbitor.ternary.ops.backend import TORCH_OPS, get_ops
    tri = get_ops(device, "triton")
    out = []
    for (M, K, N) in shapes:
        for dtype in dtypes:
            g = torch.Generator(device=device).manual_seed(M + K)
            t = torch.randint(-1, 2, (N, K), device=device, generator=g)
            T_packed = pack_ternary(t)
            x = torch.randn(M, K, device=device, generator=g).to(dtype)
            gy = torch.randn(M, N, device=device, generator=g).to(dtype)
            runs = [run_ballot(tri, gy, x, T_packed, K, group_size) for _ in range(3)]
            deterministic = all(torch.equal(runs[0][0], r[0]) for r in runs[1:])
            counted = all(r[1:] == (1, 0) for r in runs)
            ref, p_ref, nf_ref = run_ballot(TORCH_OPS, gy, x, T_packed, K, group_size)
            diff = (runs[0][0] - ref).abs()
            x_bad = x.clone()
            x_bad[M // 2, K // 3] = float("nan")
            skipped = all(int(v.abs().sum()) == 0 and (p, nf) == (0, 1)
                          for v, p, nf in (run_ballot(o, gy, x_bad, T_packed, K, group_size) for o in (tri, TORCH_OPS)))
            row = {"M": M, "K": K, "N": N, "group_size": group_size, "dtype": str(dtype).replace("torch.", ""),
                   "deterministic_3_runs": deterministic, "counted_once": counted and (p_ref, nf_ref) == (1, 0),
                   "nonfinite_skipped": skipped,
                   "groups_differing_frac": (diff != 0).float().mean().item(),
                   "weights_flipped_lower_bound_frac": diff.sum().item() / (N * K),
                   "max_abs_vote_diff": int(diff.max()), "nonzero_weights_frac": (t != 0).float().mean().item()}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def sign_agreement(args, dev, tag: str, gpu_name: str) -> int:
    """``--sign-agreement``: ``sign_agreement_rows`` on ``SIGN_SHAPES`` x bf16/fp16/fp32, written to
    ``sign-agreement-<device>.json``."""
    import triton
    torch.backends.cuda.matmul.allow_tf32 = False
    out = sign_agreement_rows(SIGN_SHAPES, (torch.bfloat16, torch.float16, torch.float32), args.group_size, dev)
    meta = {"device": gpu_name, "torch": torch.__version__, "triton": triton.__version__,
            "command": "PYTHONPATH=. python benchmarks/bench_kernels.py --sign-agreement",
            "ops": "triton: arbitor::bigint_ballot_ (votes_triton.bigint_ballot_triton_); "
                   "torch: votes.bigint_ballot_torch_; TF32 off",
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"sign-agreement-{tag}.json"), "w") as f:
        json.dump({"meta": meta, "rows": out}, f, indent=1)
    ok = all(r["deterministic_3_runs"] and r["counted_once"] and r["nonfinite_skipped"] for r in out)
    return 0 if ok else 1


def to_markdown(meta: dict, rows: list[dict]) -> str:
    out = [f"# Ternary kernels on {meta['device']}", "",
           f"torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}; {meta['timing']}; "
           f"measured {meta['date_utc']} UTC.", "", f"Command: `{meta['command']}`", "",
           "## Training shapes", "",
           "Forward / grad-x: `expand_kernel` (W_eff in the activations' dtype) + cuBLAS; ballot: cuBLAS `grad_W` "
           "chunks + vote and apply kernels, against the bare cuBLAS `grad_y.T @ x`.", "",
           "| op | M | K | N | ternary ms | cuBLAS bf16 ms | ternary TFLOP/s | cuBLAS TFLOP/s | speed ratio | "
           "time ratio |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["op"] in ("forward", "grad_x", "ballot") and r["M"] > 16:
            out.append(f"| {r['op']} | {r['M']} | {r['K']} | {r['N']} | {r['ternary_ms']:.3f} | "
                       f"{r['cublas_bf16_ms']:.3f} | "
                       f"{r['ternary_tflops']:.0f} | {r['cublas_tflops']:.0f} | {r['speed_ratio']:.2f}x | "
                       f"{r['time_ratio']:.2f} |")
    out += ["", "## Decode shapes (M <= 16)", "",
            "Fused kernels, fixed decode config (split of the reduction). Kernel time (CUDA graph); "
            "eager = per-call time including Python launch overhead.", "",
            "| op | M | K | N | split | ternary us | cuBLAS bf16 us | ternary GB/s | cuBLAS GB/s | speedup vs bf16 | "
            "eager ternary / cuBLAS us |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["op"] in ("forward", "grad_x") and r["M"] <= 16:
            out.append(f"| {r['op']} | {r['M']} | {r['K']} | {r['N']} | {r['config'].get('SPLIT', 1)} | "
                       f"{r['ternary_ms'] * 1e3:.1f} | "
                       f"{r['cublas_bf16_ms'] * 1e3:.1f} | {r['ternary_gbps']:.0f} | {r['cublas_gbps']:.0f} | "
                       f"{r['speed_ratio']:.2f}x | {r['ternary_eager_ms'] * 1e3:.0f} / "
                       f"{r['cublas_eager_ms'] * 1e3:.0f} |")
    refs = [r for r in rows if r["op"] == "torch_ref"]
    if refs:
        out += ["", "## Torch reference backend (same shapes)", "",
                "torch reference: eager `do_bench`; triton backward = grad-x + the ballot (CUDA graph).", "",
                "| M | K | N | torch fwd ms | torch bwd ms | triton bwd ms | fwd speedup | bwd speedup |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in refs:
            out.append(f"| {r['M']} | {r['K']} | {r['N']} | {r['torch_forward_ms']:.2f} | "
                       f"{r['torch_backward_ms']:.2f} | "
                       f"{r['triton_backward_ms']:.2f} | {r['forward_speedup_vs_torch']:.1f}x | "
                       f"{r['backward_speedup_vs_torch']:.1f}x |")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())

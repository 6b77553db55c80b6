"""Cost of the ``counter`` update rule (issue 6) on a GPU: per layer and per training step.

Usage (CUDA machine)::

    PYTHONPATH=. python benchmarks/bench_counter.py [--out-dir benchmarks/results/counter] [--device-name h100]
                                                   [--steps 20] [--quick]

Writes ``<out-dir>/<device>.json`` and ``<out-dir>/<device>.md``.

Part A, one layer, forward + backward + ``ternary_step`` (median ms over ``--iters`` CUDA-event-timed
iterations, after warm-up). No op of a step reads a value back to the host: a ballot with a non-finite
``grad_y`` or ``x`` is skipped and counted on the device (the layer's ``nonfinite`` buffer), so no host sync
is timed:

* ``dense``          cuBLAS: ``y = x @ W.T`` and its backward (``grad_x`` and ``grad_W``), the baseline;
* ``bigint``         ``TernaryScaleTensor(update_rule="bigint", backend="triton")``: Triton forward and grad_x
                     (``W_eff`` expanded by a kernel, cuBLAS multiplies), the ballot (cuBLAS ``grad_W`` + Triton
                     vote and apply kernels, ``arbitor.ternary.ops.votes_triton.bigint_ballot_triton_``);
* ``counter-triton`` ``update_rule="counter"``: Triton forward and grad_x, cuBLAS ``grad_W``, fused Triton step
                     (``arbitor.ternary.ops.counter.counter_ballot_(impl="triton")``);
* ``counter-torch``  the same with the per-weight step in plain torch ops (the reference,
                     ``counter_ballot_(impl="torch")``; forced through the layer's ops table, ``_torch_step_ops``).

Part B, whole training steps of the nanoGPT ``shakespeare_char`` shape (6 x 384, ctx 256, batch 64,
fp32 activations with TF32 matmuls, as in ``benchmarks/quality.py``) on the bundled corpus:
tokens/s over ``--steps`` steps after 5 warm-up steps, one row at a time (no sharing), and peak memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from benchmarks._device import device_tag  # noqa: E402

LAYER_SHAPES = [(16384, 384, 1536), (16384, 1536, 384), (8192, 4096, 4096)]
# ModelConfig field changes per part-B row (``ternary``: TernaryConfig changes of the dense ternary layers only;
# the embedding keeps the preset's group size)
STEP_ROWS = {
    "dense": dict(linear="dense", dense_lr=1e-3),
    "bitnet": dict(linear="bitnet", dense_lr=1e-3),
    "bigint-g32-s16": dict(ternary=dict(update_rule="bigint", group_size=32, strength=16.0)),
    "counter-b4-r0.5-g128": dict(ternary=dict(update_rule="counter", group_size=128, strength=16.0, counter_bits=4,
                                              counter_rate=0.5)),
}
LAYER_ROWS = (  # name, TernaryScaleTensor settings, impl of the counter rule's per-weight step (None: the table's)
    ("bigint", dict(update_rule="bigint"), None),
    ("counter-triton", dict(update_rule="counter", counter_bits=4, counter_rate=0.5), None),
    ("counter-torch", dict(update_rule="counter", counter_bits=4, counter_rate=0.5), "torch"),
)


def _time(fn, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def _torch_step_ops(dev):
    """The Triton ops table with the ``counter`` rule's per-weight step swapped for the torch reference.

    Forward, grad_x and the ``grad_W`` GEMM stay as on a Triton layer; only ``counter_ballot_``'s
    per-block step runs as plain torch ops (``impl="torch"``).
    """
    from arbitor.ternary.ops.backend import get_ops
    from arbitor.ternary.ops.counter import counter_ballot_
    return dataclasses.replace(get_ops(dev, "triton"), counter_ballot_=functools.partial(counter_ballot_, impl="torch"))


def bench_layers(args, dev) -> list[dict]:
    from arbitor.ternary.layer import TernaryScaleTensor
    from arbitor.ternary.step import ternary_step
    rows = []
    shapes = LAYER_SHAPES[:2] if args.quick else LAYER_SHAPES
    for (M, K, N) in shapes:
        x = torch.randn(M, K, device=dev, requires_grad=True)
        gy = torch.randn(M, N, device=dev)
        W = (torch.randn(N, K, device=dev) / K ** 0.5).requires_grad_()

        def dense():
            (x @ W.t()).backward(gy)
        rec = {"M": M, "K": K, "N": N, "dense_ms": _time(dense, args.iters)}
        for name, kw, step_impl in LAYER_ROWS:
            layer = TernaryScaleTensor(K, N, group_size=128, seed=1, device=dev, strength=16.0, backend="triton", **kw)
            if step_impl == "torch":  # this instance only: its op-table lookup returns the torch-step table
                ops = _torch_step_ops(dev)
                layer._ops = lambda device, _ops=ops: _ops

            def run():
                layer(x).backward(gy)
                ternary_step(layer)
            rec[f"{name}_ms"] = _time(run, args.iters)
        for name in ("bigint", "counter-triton", "counter-torch"):
            rec[f"{name}_vs_dense"] = rec[f"{name}_ms"] / rec["dense_ms"]
        rows.append(rec)
        print(json.dumps(rec), flush=True)
    return rows


def bench_steps(args, dev) -> list[dict]:
    from arbitor.data import BUNDLED_TEXT_PATH
    from arbitor.train import ModelSettings, TextConfig, TrainConfig, build_run
    torch.set_float32_matmul_precision("high")
    out = []
    for name, over in STEP_ROWS.items():
        tcfg = TrainConfig(steps=args.steps + 5, batch=64, ctx=256, eval_interval=0, eval_batches=1)
        text = TextConfig(text_data=args.data or str(BUNDLED_TEXT_PATH), vocab="char")
        model = dict(d_model=384, n_layers=6, n_heads=6, mlp_mult=4, max_ctx=256, **over)
        tr = build_run("text", tcfg, text, settings=ModelSettings(preset="small"), device=dev, model_fields=model)
        for _ in range(5):
            tr.train_step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            tr.train_step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rec = {"row": name, "tokens_per_s": args.steps * 64 * 256 / dt, "step_ms": 1000 * dt / args.steps,
               "peak_mem_mb": torch.cuda.max_memory_allocated() / 2 ** 20}
        out.append(rec)
        print(json.dumps(rec), flush=True)
        del tr
        torch.cuda.empty_cache()
    base = next(r["tokens_per_s"] for r in out if r["row"] == "bitnet")
    for r in out:
        r["vs_bitnet"] = r["tokens_per_s"] / base
    return out


def to_markdown(meta: dict, layers: list[dict], steps: list[dict]) -> str:
    lines = [f"# Counter rule cost ({meta['device']})", "", f"Command: `{meta['command']}`", "",
             f"GPU: {meta['gpu']}; torch {meta['torch']}, triton {meta['triton']}.", "",
             "## One layer, forward + backward (median ms; ratio = time / cuBLAS dense time, lower is better)", "",
             "| M x K -> N | dense cuBLAS | bigint | counter (Triton step) | counter (torch step) |",
             "|---|---:|---:|---:|---:|"]
    for r in layers:
        lines.append(f"| {r['M']} x {r['K']} -> {r['N']} | {r['dense_ms']:.3f} | {r['bigint_ms']:.3f} "
                     f"({r['bigint_vs_dense']:.2f}x) | {r['counter-triton_ms']:.3f} "
                     f"({r['counter-triton_vs_dense']:.2f}x)"
                     f" | {r['counter-torch_ms']:.3f} ({r['counter-torch_vs_dense']:.2f}x) |")
    lines += ["", "## Training steps, nanoGPT shakespeare_char shape, one row at a time", "",
              "| row | tokens/s | ms/step | vs BitNet QAT | peak MiB |", "|---|---:|---:|---:|---:|"]
    for r in steps:
        lines.append(f"| {r['row']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {r['vs_bitnet']:.2f}x | "
                     f"{r['peak_mem_mb']:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="text for part B (default: the bundled corpus)")
    ap.add_argument("--out-dir", default="benchmarks/results/counter")
    ap.add_argument("--device-name", default=None)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_counter.py needs CUDA", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    import triton
    gpu = torch.cuda.get_device_name(dev)
    tag = args.device_name or device_tag(gpu)
    meta = {"device": tag, "gpu": gpu, "torch": torch.__version__, "triton": triton.__version__,
            "command": "PYTHONPATH=. python benchmarks/bench_counter.py " + " ".join(argv or sys.argv[1:])}
    layers = bench_layers(args, dev)
    steps = bench_steps(args, dev)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"meta": meta, "layers": layers, "steps": steps}, indent=1))
    (out / f"{tag}.md").write_text(to_markdown(meta, layers, steps))
    print(to_markdown(meta, layers, steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

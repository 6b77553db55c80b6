"""Decode tokens/s: an arbitor model against the same architecture with dense float weights.

Greedy generation with the KV cache (``ArbitorLM.generate``) of ``--new`` tokens after a ``--prompt``-token
prompt, at batch 1 and 16, for a preset in ternary form and with ``linear="dense"`` (float32 on the CPU,
bf16 on a GPU). Both models are built the same way (seeded), so the measured difference is the layers.
Writes ``<out-dir>/<device>.json|md`` in the layout of the inference issue (``rows``: ``name``, ``shape``,
``arbitor_ms``, ``baseline``, ``baseline_ms``, ``ratio`` = arbitor tokens/s over the baseline's).

    PYTHONPATH=. python benchmarks/bench_decode.py --preset small --device cpu
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitor.model.config import preset  # noqa: E402
from arbitor.model.text import ArbitorLM  # noqa: E402
from arbitor.ternary.audit import ternary_audit  # noqa: E402
from benchmarks._device import device_tag  # noqa: E402


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results" / "inference"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    torch.set_grad_enabled(False)
    models = {}
    for linear in ("ternary", "dense"):
        torch.manual_seed(0)
        cfg = preset(args.preset, linear=linear, compute_dtype=dtype, max_ctx=max(256, args.prompt + args.new))
        models[linear] = ArbitorLM(cfg).to(device).eval()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    tag = device_tag(name)
    res = {"device": tag, "device_name": name, "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(),
           "command": "PYTHONPATH=. python benchmarks/bench_decode.py " + " ".join(argv or sys.argv[1:]), "rows": []}
    audit = ternary_audit(models["ternary"])
    res["weights"] = audit["logical_ternary_weights"]
    for batch in (1, 16):
        tps = {k: tokens_per_s(m, batch, args.prompt, args.new, device, args.reps) for k, m in models.items()}
        row = {"name": f"decode_{args.preset}_b{batch}", "shape": f"{args.preset} preset, batch {batch}, "
               f"{args.prompt}-token prompt, {args.new} new", "arbitor_ms": 1000 * batch / tps["ternary"],
               "baseline": f"same architecture, dense {dtype} weights, KV cache, eager",
               "baseline_ms": 1000 * batch / tps["dense"], "ratio": tps["ternary"] / tps["dense"],
               "arbitor_tokens_per_s": tps["ternary"], "baseline_tokens_per_s": tps["dense"]}
        res["rows"].append(row)
        print(row, flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(res, indent=1))
    lines = [f"# Decode speed ({tag})", "", f"Command: `{res['command']}` ({res['threads']} threads)", "",
             "| row | arbitor tokens/s | dense tokens/s | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {r['shape']} | {r['arbitor_tokens_per_s']:,.0f} | {r['baseline_tokens_per_s']:,.0f} | "
              f"{r['ratio']:.2f}x |" for r in res["rows"]]
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

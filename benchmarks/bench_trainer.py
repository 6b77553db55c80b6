"""Tokens/s of ``Trainer.train_step`` -- the path ``arbitor train`` takes -- eager, graphed and compiled.

``bench_speed.py`` times hand-built steps against the baselines; this script checks that a user reaches
the same speed through the trainer's flags (``TrainConfig.cuda_graph`` / ``compile``): nanoGPT's shape
(6 layers x 384, batch 64 x ctx 256) on a text file, each update rule, each mode:

* ``eager``              -- the default;
* ``cuda_graph``         -- ``--cuda-graph``: the whole step replayed from one CUDA graph;
* ``compile``            -- ``--compile`` (each block compiled);
* ``compile+cuda_graph`` -- both: the compiled step replayed from one graph (bit-equal to ``compile`` alone,
  ``results/trainer/h200-compile.md``). The ``loss`` column shows whether each mode learns like the eager one.

Each row: mean tokens/s over ``--steps`` timed steps (one sync at the end, as in ``fit``) after ``--warmup`` (graph capture included in the
warm-up), the peak allocated MiB of an eager step, and the loss after the run (the same data order in
every mode). Writes ``<out-dir>/<device>.json`` and ``.md``.

    PYTHONPATH=. python benchmarks/bench_trainer.py --text ../shared/data/tinyshakespeare.txt
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

from arbitor.data import BUNDLED_TEXT_PATH  # noqa: E402
from arbitor.train import ModelSettings, TextConfig, TrainConfig, build_run  # noqa: E402
from benchmarks._device import device_tag  # noqa: E402

MODEL = dict(d_model=384, n_layers=6, n_heads=6, mlp_mult=4, compute_dtype="bfloat16")
MODES = {"eager": {}, "cuda_graph": {"cuda_graph": True}, "compile": {"compile": True},
         "compile+cuda_graph": {"compile": True, "cuda_graph": True}}


def measure(text: str, rule: str, mode: str, batch: int, ctx: int, steps: int, warmup: int) -> dict:
    tcfg = TrainConfig(steps=steps + warmup, batch=batch, ctx=ctx, eval_interval=0, log_interval=0, **MODES[mode])
    tr = build_run("text", tcfg, TextConfig(text_data=text), ModelSettings(preset="small", update_rule=rule),
                   device="cuda", model_fields=dict(MODEL, max_ctx=ctx))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        tr.train_step()
    torch.cuda.synchronize()
    peak = tr.graphed.eager_peak_mib if tr.graphed is not None else torch.cuda.max_memory_allocated() / 2 ** 20
    t = time.perf_counter()
    for _ in range(steps):     # as in Trainer.fit: no sync per step, the host prepares step i+1 while the
        loss = tr.train_step()["text"]    # GPU runs step i
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    return {"update_rule": rule, "mode": mode, "step_ms": 1000 * dt, "tokens_per_s": batch * ctx / dt,
            "peak_mib": peak, "loss": float(loss)}


def profile(text: str, rule: str, batch: int, ctx: int, top: int = 15) -> dict:
    """GPU time of one eager trainer step (torch.profiler), its top kernels by self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    tcfg = TrainConfig(steps=4, batch=batch, ctx=ctx, eval_interval=0, log_interval=0)
    tr = build_run("text", tcfg, TextConfig(text_data=text), ModelSettings(preset="small", update_rule=rule),
                   device="cuda", model_fields=dict(MODEL, max_ctx=ctx))
    for _ in range(2):
        tr.train_step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        tr.train_step()
        torch.cuda.synchronize()
    evs = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    rows = [{"name": e.key[:90], "calls": e.count, "self_ms": round(e.self_device_time_total / 1000, 3)}
            for e in sorted(evs, key=lambda e: -e.self_device_time_total)[:top]]
    return {"update_rule": rule, "gpu_ms": round(sum(e.self_device_time_total for e in evs) / 1000, 2),
            "model": str(tr.model.cfg), "top": rows}


def render(res: dict) -> str:
    lines = [f"# Trainer step speed ({res['device']})", "",
             f"Device: {res['device_name']}; torch {res['torch']}.", "", f"Command: `{res['command']}`", "",
             f"Model: nanoGPT shape {res['model']}, batch {res['batch']} x ctx {res['ctx']}, "
             f"mean of {res['steps']} timed steps after {res['warmup']} warm-up steps.", "",
             "| update rule | mode | step ms | tokens/s | vs eager | peak MiB (eager step) | loss after |",
             "|---|---|---:|---:|---:|---:|---:|"]
    eager = {r["update_rule"]: r["tokens_per_s"] for r in res["rows"] if r["mode"] == "eager"}
    for r in res["rows"]:
        vs = r["tokens_per_s"] / eager[r["update_rule"]] if r["update_rule"] in eager else float("nan")
        lines.append(f"| {r['update_rule']} | {r['mode']} | {r['step_ms']:.2f} | {r['tokens_per_s']:,.0f} | "
                     f"{vs:.2f}x | {r['peak_mib']:,.0f} | {r['loss']:.4f} |")
    for p in res.get("profiles", []):
        lines += ["", f"## One eager {p['update_rule']} step: {p['gpu_ms']} ms of GPU time (self time)", "",
                  f"`{p['model']}`", "", "| kernel | calls | ms |", "|---|---:|---:|"]
        lines += [f"| `{t['name']}` | {t['calls']} | {t['self_ms']} |" for t in p["top"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", default=str(BUNDLED_TEXT_PATH), help="UTF-8 text file to train on")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=6, help="untimed steps (>= 4 so the graph is captured)")
    ap.add_argument("--rules", default="bigint,counter")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--profile", action="store_true", help="add the GPU time of one eager step, top kernels")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results" / "trainer"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_trainer.py needs a CUDA device", file=sys.stderr)
        return 2
    bad = [m for m in args.modes.split(",") if m not in MODES]
    if bad:
        print(f"--modes: unknown mode(s) {bad}; choose from {list(MODES)}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    res = {"device": device_tag(name), "device_name": name, "torch": torch.__version__,
           "python": platform.python_version(), "model": MODEL, "batch": args.batch, "ctx": args.ctx,
           "steps": args.steps, "warmup": args.warmup, "rows": [],
           "command": "PYTHONPATH=. python benchmarks/bench_trainer.py " + " ".join(argv if argv is not None
                                                                                 else sys.argv[1:])}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for rule in args.rules.split(","):
        for mode in args.modes.split(","):
            r = measure(args.text, rule, mode, args.batch, args.ctx, args.steps, args.warmup)
            res["rows"].append(r)
            print(f"{rule:>8} {mode:>20}: {r['tokens_per_s']:,.0f} tok/s, {r['step_ms']:.2f} ms, "
                  f"peak {r['peak_mib']:,.0f} MiB, loss {r['loss']:.4f}", flush=True)
            (out / f"{res['device']}.json").write_text(json.dumps(res, indent=1))
            (out / f"{res['device']}.md").write_text(render(res))
            torch.cuda.empty_cache()
        if args.profile:
            res.setdefault("profiles", []).append(profile(args.text, rule, args.batch, args.ctx))
            (out / f"{res['device']}.json").write_text(json.dumps(res, indent=1))
            (out / f"{res['device']}.md").write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

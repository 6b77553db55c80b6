"""Does it learn? Side-by-side quality study on character-level tiny Shakespeare (issue 6).

Usage::

    PYTHONPATH=. python benchmarks/quality.py DATA_PATH [--steps 600] [--eval-at 100,200,...]
        [--rows dense,bitnet,...] [--device cuda] [--out-dir benchmarks/results/quality/<name>] [--parallel K]
        [--time-limit 520] [--shape nanogpt|tiny]
    PYTHONPATH=. python benchmarks/quality.py --aggregate OUT_DIR [--device-name h100]   # re-render

Every row trains the same architecture (``--shape nanogpt``: the nanoGPT ``shakespeare_char``
shape, 6 layers, 6 heads, d_model 384, ctx 256, batch 64; arbitor's block: RMSNorm, attention,
LTI injection, squared-ReLU MLP, BigInt ternary embedding) on the same character vocabulary,
the same 90/10 split, the same data order (``TrainConfig.seed``) and the same number of tokens;
only the projection layers and their update rule differ (``ROWS``). Validation loss
(nats/token) is measured on the same fixed held-out windows at the ``--eval-at`` steps.

Rows run as parallel subprocesses (one per row, ``--parallel`` at a time) on one device; each
writes ``<out-dir>/rows/<name>.json`` after every evaluation, and the parent re-renders
``quality-<device>.json`` / ``.md`` / ``.png`` whenever a row finishes, so a run cut short
still leaves data. ``--time-limit`` seconds after the start every worker stops at its next
step (status ``deadline``): the table then compares rows at the last step all of them reached.

Per row: val loss at each eval step, training-state bytes per weight (``ternary_audit``; for
float rows the fp32 parameters + the two fp32 AdamW moments, 12 bytes per float weight, plus
the embedding's integer state, over all weights), peak GPU memory of that process
(``torch.cuda.max_memory_allocated``), training tokens/s (steps only, evaluation excluded;
rows share the GPU, so this is throughput *under contention*, comparable only within a run).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._device import device_tag  # noqa: E402

SHAPES = {
    # nanoGPT shakespeare_char: n_layer 6, n_head 6, n_embd 384, block_size 256, batch_size 64
    "nanogpt": dict(model=dict(d_model=384, n_layers=6, n_heads=6, mlp_mult=4, max_ctx=256), batch=64, ctx=256),
    # for a CPU pre-study of the rows (2 cores: minutes, not hours)
    "cpu": dict(model=dict(d_model=128, n_layers=2, n_heads=4, mlp_mult=4, max_ctx=64), batch=16, ctx=64),
    # for the CPU test of the machinery
    "tiny": dict(model=dict(d_model=128, n_layers=1, n_heads=4, mlp_mult=2, max_ctx=32), batch=4, ctx=32),
}

# name -> (label, ModelConfig changes; "ternary" holds the TernaryConfig changes)
ROWS: dict[str, tuple[str, dict]] = {
    "dense": ("dense float, AdamW lr 1e-3", dict(linear="dense", dense_lr=1e-3)),
    "bitnet": ("BitNet b1.58 QAT, AdamW lr 1e-3", dict(linear="bitnet", dense_lr=1e-3)),
}
for _g in (32, 64, 128):
    for _s in (4, 16):
        ROWS[f"bigint-g{_g}-s{_s}"] = (f"arbitor bigint (spec), group {_g}, strength {_s}",
                                       dict(ternary=dict(update_rule="bigint", group_size=_g, strength=float(_s))))
# The dense legacy rule, the stateless "flip" rule and the leaky window lost the study (docs/quality.md keeps
# their rows as history) and were removed with arbitor 0.2.


def counter_row(bits: int, rate: float, group: int, strength: float = 16.0) -> str:
    """Register (once) and name a row of the counter rule (issue 6's gap-closing mode)."""
    name = f"counter-b{bits}-r{rate:g}-g{group}" + ("" if strength == 16.0 else f"-s{strength:g}")
    ROWS.setdefault(name, (
        f"arbitor counter (BigInt + trits on {bits}-bit packed counters, rate {rate:g}), group {group}, "
        f"strength {strength:g}",
        dict(ternary=dict(update_rule="counter", group_size=group, strength=strength, counter_bits=bits,
                          counter_rate=rate))))
    return name


def _parse_counter_row(name: str) -> bool:
    """Rows named ``counter-b<bits>-r<rate>-g<group>[-s<strength>]`` need no table entry: registered on demand."""
    parts = name.split("-")
    if parts[0] != "counter" or len(parts) not in (4, 5) or [p[:1] for p in parts[1:]] != list("brgs")[:len(parts) - 1]:
        return False
    try:
        counter_row(int(parts[1][1:]), float(parts[2][1:]), int(parts[3][1:]),
                    float(parts[4][1:]) if len(parts) == 5 else 16.0)
    except ValueError:
        return False
    return True


for _b, _r, _g in ((2, 0.5, 32), (4, 2.0, 64), (4, 1.0, 64)):
    counter_row(_b, _r, _g)

FLOAT_STATE_BYTES = 12  # fp32 weight + AdamW exp_avg + exp_avg_sq (gradients are transient)


# ------------------------------------------------------------------------------------------ worker
def _state_bytes_per_weight(model) -> dict:
    from arbitor.ternary.audit import ternary_audit
    a = ternary_audit(model)
    fl = a["trainable_float_params"]
    weights = a["logical_ternary_weights"] + fl
    total = a["training_state_bytes"] + FLOAT_STATE_BYTES * fl
    return {"state_bytes_per_weight": total / weights, "weights": weights, "float_weights": fl,
            "integer_state_bytes": a["training_state_bytes"], "state_bytes_total": total,
            "pure_ternary": a["pure_ternary"]}


def run_row(args) -> int:
    import torch
    from arbitor.train import ModelSettings, TextConfig, TrainConfig, build_run

    name = args.row
    if name not in ROWS:
        _parse_counter_row(name)
    label, overrides = ROWS[name]
    shape = SHAPES[args.shape]
    out = Path(args.out_dir) / "rows"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, every row alike
    eval_at = sorted({int(s) for s in args.eval_at.split(",") if s} | {args.steps})
    eval_at = [s for s in eval_at if s <= args.steps]
    tcfg = TrainConfig(steps=args.steps, batch=shape["batch"], ctx=shape["ctx"], eval_interval=0,
                       eval_batches=args.eval_batches, seed=args.seed, schedule=args.schedule,
                       warmup_steps=args.warmup_steps, min_rate_ratio=args.min_rate_ratio)
    text = TextConfig(text_data=args.data, vocab="char", val_fraction=0.1)
    rec = {"name": name, "label": label, "overrides": overrides, "shape": args.shape,
           "batch": shape["batch"], "ctx": shape["ctx"], "steps_target": args.steps, "evals": [],
           "status": "running", "step": 0}

    def save():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        os.replace(tmp, path)

    try:
        # the "small" preset's ternary settings, the shape's size, the row's changes; --seed (TrainConfig.seed)
        # seeds the model init and the data order
        trainer = build_run("text", tcfg, text, ModelSettings(preset="small"), device=args.device,
                            model_fields=dict(shape["model"], **overrides))
        rec.update(_state_bytes_per_weight(trainer.model))
        rec["device_name"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        first = trainer.evaluate()
        rec["evals"].append({"step": 0, "tokens": 0, **first})
        save()
        train_time = 0.0
        last_loss = float("nan")
        while trainer.step < args.steps:
            if time.time() > args.deadline:
                rec["status"] = "deadline"
                break
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            losses = trainer.train_step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            train_time += time.perf_counter() - t0
            if trainer.step in eval_at:
                last_loss = float(sum(losses.values()))
                if not math.isfinite(last_loss):
                    rec["status"] = f"diverged: non-finite loss at step {trainer.step}"
                    break
                ev = trainer.evaluate()
                rec["evals"].append({"step": trainer.step, "tokens": trainer.tokens_seen, "train_loss": last_loss,
                                     **ev})
                rec["step"] = trainer.step
                rec["tokens_per_s"] = trainer.tokens_seen / max(train_time, 1e-9)
                rec["train_s"] = train_time
                if dev.type == "cuda":
                    rec["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
                save()
        else:
            rec["status"] = "done"
        rec["step"] = trainer.step
        rec["tokens_per_s"] = trainer.tokens_seen / max(train_time, 1e-9) if trainer.step else None
        rec["train_s"] = train_time
        rec["last_train_loss"] = last_loss
        if dev.type == "cuda":
            rec["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    except Exception as exc:  # record and keep the other rows going
        rec["status"] = f"error: {type(exc).__name__}: {exc}"[:300]
    save()
    print(f"[{name}] {rec['status']} at step {rec['step']}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------ report
def _device_slug(rows: list[dict], fallback: str) -> str:
    for r in rows:
        d = r.get("device_name", "")
        if d:
            return device_tag(d)
    return fallback


def aggregate(out_dir: Path, device_name: str | None = None, command: str = "", meta: dict | None = None) -> dict:
    rows_dir = out_dir / "rows"
    order = {n: i for i, n in enumerate(ROWS)}
    rows = [json.loads(p.read_text()) for p in sorted(rows_dir.glob("*.json"))] if rows_dir.exists() else []
    rows.sort(key=lambda r: order.get(r["name"], 99))
    slug = device_name or _device_slug(rows, "unknown")
    steps = sorted({e["step"] for r in rows for e in r["evals"] if e["step"] > 0})
    common = max([s for s in steps if all(any(e["step"] == s for e in r["evals"]) for r in rows)], default=0)
    qat = next((r for r in rows if r["name"] == "bitnet"), None)

    def loss_at(r, s):
        return next((e["val_loss"] for e in r["evals"] if e["step"] == s), None)

    result = {"device": slug, "command": command, "meta": meta or {}, "eval_steps": steps,
              "common_step": common, "rows": rows}
    if rows:
        result["tokens_per_step"] = rows[0]["batch"] * rows[0]["ctx"]
    (out_dir / f"quality-{slug}.json").write_text(json.dumps(result, indent=1))
    # markdown
    lines = [f"# Quality study ({slug})", "", f"Command: `{command}`" if command else "", ""]
    if rows:
        tps = rows[0]["batch"] * rows[0]["ctx"]
        lines.append(f"Shape {rows[0]['shape']}: batch {rows[0]['batch']} x ctx {rows[0]['ctx']} = {tps:,} tokens/step. "
                     f"Validation loss in nats/token (char vocab). Common step (all rows reached): {common} "
                     f"({common * tps:,} tokens).")
        lines.append("")
    hdr = ["row"] + [f"@{s}" for s in steps] + [f"vs QAT @{common}", "state B/weight", "peak GPU MB", "tok/s",
                                                   "status"]
    lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for r in rows:
        cells = [r["name"]]
        for s in steps:
            v = loss_at(r, s)
            cells.append(f"{v:.4f}" if v is not None else "")
        q, v = (loss_at(qat, common) if qat else None), loss_at(r, common)
        cells.append(f"{v - q:+.3f}" if (q is not None and v is not None) else "")
        bpw = r.get("state_bytes_per_weight")
        cells.append(f"{bpw:.3f}" if bpw is not None else "")
        pm = r.get("peak_mem_mb")
        cells.append(f"{pm:,.0f}" if pm is not None else "")
        t = r.get("tokens_per_s")
        cells.append(f"{t:,.0f}" if t else "")
        cells.append(str(r.get("status", "")).split(":")[0])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Rows:", ""] + [f"- `{r['name']}`: {r['label']}" for r in rows]
    (out_dir / f"quality-{slug}.md").write_text("\n".join(lines) + "\n")
    # plot
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for r in rows:
            pts = [(e["step"], e["val_loss"]) for e in r["evals"] if math.isfinite(e["val_loss"])
                   and e["val_loss"] < 6]
            if not pts:
                continue
            style = "-" if r["name"] in ("dense", "bitnet") else ("--" if r["name"].startswith("counter") else ":")
            ax.plot(*zip(*pts), style, marker="o", ms=3, lw=2 if r["name"] in ("dense", "bitnet") else 1.2,
                    label=r["name"])
        ax.set_xlabel("step (x %d tokens)" % result.get("tokens_per_step", 0))
        ax.set_ylabel("validation loss, nats/token")
        ax.set_title(f"arbitor quality study, char tiny Shakespeare ({slug})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out_dir / f"quality-{slug}.png", dpi=110)
        plt.close(fig)
    except ImportError:
        print("matplotlib missing: no PNG (re-render with --aggregate)", flush=True)
    return result


# ------------------------------------------------------------------------------------------ parent
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="?")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-at", default="")
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out-dir", default="benchmarks/results/quality/latest")
    ap.add_argument("--parallel", type=int, default=0, help="rows at a time (0: all)")
    ap.add_argument("--time-limit", type=float, default=520.0, help="seconds; workers stop at their next step")
    ap.add_argument("--shape", default="nanogpt", choices=sorted(SHAPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schedule", default="constant", choices=("constant", "cosine"),
                    help="every row alike: AdamW lr and the ternary rules' rates (TrainConfig.schedule)")
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--min-rate-ratio", type=float, default=0.1)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--aggregate", help="only re-render the report of this out dir")
    ap.add_argument("--device-name", default=None)
    args = ap.parse_args(argv)
    if args.aggregate:
        prev = {}
        for p in Path(args.aggregate).glob("quality-*.json"):
            prev = json.loads(p.read_text())
        aggregate(Path(args.aggregate), args.device_name or prev.get("device"), prev.get("command", ""),
                  prev.get("meta"))
        return 0
    if not args.data:
        ap.error("DATA_PATH is required")
    if not args.eval_at:
        every = max(1, args.steps // 6)
        args.eval_at = ",".join(str(s) for s in range(every, args.steps + 1, every))
    if args.row:
        return run_row(args)
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS and not _parse_counter_row(n)]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    out = Path(args.out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    for n in names:
        (out / "rows" / f"{n}.json").unlink(missing_ok=True)
    t_start = time.time()
    deadline = t_start + args.time_limit
    command = "PYTHONPATH=. python benchmarks/quality.py " + " ".join(a for a in (argv if argv is not None
                                                                                  else sys.argv[1:]))
    meta = {"steps": args.steps, "eval_at": args.eval_at, "eval_batches": args.eval_batches,
            "time_limit_s": args.time_limit, "parallel": args.parallel or len(names), "schedule": args.schedule,
            "warmup_steps": args.warmup_steps, "min_rate_ratio": args.min_rate_ratio}
    parallel = args.parallel or len(names)
    pending = list(names)
    running: dict[str, subprocess.Popen] = {}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    while pending or running:
        while pending and len(running) < parallel and time.time() < deadline:
            n = pending.pop(0)
            cmd = [sys.executable, os.path.abspath(__file__), args.data, "--row", n, "--steps", str(args.steps),
                   "--eval-at", args.eval_at, "--eval-batches", str(args.eval_batches), "--device", args.device,
                   "--out-dir", str(out), "--shape", args.shape, "--seed", str(args.seed),
                   "--deadline", str(deadline), "--schedule", args.schedule, "--warmup-steps", str(args.warmup_steps),
                   "--min-rate-ratio", str(args.min_rate_ratio)]
            log = open(out / "logs" / f"{n}.log", "w")
            running[n] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if pending and time.time() >= deadline:
            pending.clear()
        done = [n for n, p in running.items() if p.poll() is not None]
        for n in done:
            running.pop(n)
            print(f"row {n} finished ({time.time() - t_start:.0f}s)", flush=True)
        if done:
            meta["wall_s"] = time.time() - t_start
            aggregate(out, args.device_name, command, meta)
        if time.time() > deadline + 30:  # a worker stuck past its deadline
            for n, p in running.items():
                p.kill()
                print(f"row {n} killed after the deadline", flush=True)
            running.clear()
        time.sleep(0.5)
    meta["wall_s"] = time.time() - t_start
    res = aggregate(out, args.device_name, command, meta)
    print((out / f"quality-{res['device']}.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does it learn? Side-by-side quality study: float baselines, BitNet QAT and arbitor's ternary rules (issues 6, 18).

Usage::

    PYTHONPATH=. python benchmarks/quality.py DATA_PATH [--recipe default|nanogpt-full|scale-100m]
        [--rows dense,bitnet,...|tune] [--seeds 0,1,2] [--device cuda[,cuda:1]] [--parallel K]
        [--out-dir benchmarks/results/quality/<name>] [--time-limit 520] [--fast/--no-fast]
        [--steps N] [--eval-every N | --eval-at 100,200,...] [--eval-batches N] [--final-eval-batches N]
        [--shape nanogpt|gpt60m|cpu|tiny] [--vocab char|byte] [--schedule cosine] [--warmup-steps N] ...
    PYTHONPATH=. python benchmarks/quality.py --aggregate OUT_DIR [--device-name h100]   # re-render
    PYTHONPATH=. python benchmarks/quality.py --aggregate OUT_DIR --merge OTHER/quality-h200.json [...]

Every row trains the same architecture (``--shape``; ``nanogpt``: nanoGPT's ``shakespeare_char`` shape, 6 layers,
6 heads, d_model 384, ctx 256, batch 64; arbitor's block: RMSNorm, attention, LTI injection, squared-ReLU MLP,
BigInt ternary embedding) on the same vocabulary, the same 90/10 split, the same data order and the same number
of tokens; only the projection layers and their update rule (and step size) differ (``ROWS``). A row is trained
once per seed (``--seeds``: the seed of the model init, the data order and the validation windows). Validation
loss (nats/token) is measured on fixed held-out windows: ``--eval-batches`` batches at the intermediate
evaluations, ``--final-eval-batches`` at the last step (nanoGPT's ``eval_iters`` is 200).

Recipes (``RECIPES``; every value can be overridden by its flag):

* ``default``: the first studies' protocol (600 steps, constant step sizes, no dropout, AdamW without decay).
* ``nanogpt-full``: nanoGPT's whole ``shakespeare_char`` recipe -- 5000 steps of 64 x 256 tokens (81.9 M
  tokens), dropout 0.2, warm-up 100 steps and cosine decay to 10 % (held for blocks of ``--schedule-hold``
  steps, see below), and for the float rows AdamW betas (0.9, 0.99), weight decay 0.1, gradient clipping 1.0;
  evaluation every 250 steps on 40 batches and at step 5000 on 200.
* ``scale-100m``: the ``gpt60m`` shape (see ``SHAPES``) for 6200 steps of 32 x 512 = 101.6 M tokens, byte
  vocabulary, no dropout, warm-up 2 % (124 steps) and cosine decay to 10 %, float rows with nanoGPT's GPT-2
  settings (betas (0.9, 0.95), weight decay 0.1, clipping 1.0); evaluation every 500 steps.

Rows are named with their step size, so each family gets the same tuning effort (``ROW_SETS["tune"]``, or
``--rows tune``): ``dense-lr6e-4`` (dense float, AdamW lr 6e-4), ``bitnet-lr2e-3`` (BitNet b1.58 QAT),
``counter-b4-r0.5-g128`` (arbitor's counter rule: 4-bit counters, rate 0.5, group 128), ``bigint-g32-s16`` (the
spec's rule: group 32, strength 16; it has no step size); a ternary row's name ending in ``-fp8`` is that row with
its ballots' ``grad_W`` from fp8 operands (``TernaryConfig.gradw_fp8``), one ending in ``-fp8all`` with its forward and
grad-x from fp8 operands too (``matmul_fp8``). Names of these forms need no table entry. The study's shapes are
below the sizes where fp8 pays (``ternary/ops/fp8.py``), so these rows need ``--fp8-every-layer`` to use it.

Speed (``--fast``, the default on CUDA): ternary rows replay the whole step as a CUDA graph
(``TrainConfig.cuda_graph``; ``--fast-ternary compile+graph`` compiles them too: 1.55x for the counter rule in
bf16 at nanoGPT's shape on the H200, ``results/trainer/h200-compile.md``), float rows are compiled and graphed as well
(``--fast-float``). A graph replays the
step sizes it was captured with, so a cosine schedule is held constant for blocks of ``--schedule-hold`` steps
(each block takes its middle step's factor) and the step is captured again once per block; every row uses the
same held schedule, graphed or not, so ``--no-fast`` runs the same numbers (up to compiled float rounding).

Resumable: each row and seed trains in ``<out-dir>/runs/<row>-s<seed>`` with the trainer's checkpoints, written
after every evaluation and when the row stops at ``--time-limit`` (status ``deadline``) or ``--stop-at``
(``paused``). Started again with the same ``--out-dir``, the script resumes every unfinished row from its
checkpoint (bit-exact: a resumed row's evaluations equal an uninterrupted run's) and skips finished ones, so a
long study runs as several calls. The settings of the first call are kept in ``<out-dir>/study.json``; a later
call with other settings is refused. A row whose process fails is recorded with its error (``status``) and
retried by the next call; the other rows go on. Rows trained under another out dir (another call or machine)
join a report with ``--aggregate OUT_DIR --merge OTHER/quality-<device>.json``: same data digest and training
settings required, only the data path and the speed modes may differ (``merge_reports``).

Rows run as parallel subprocesses (``--parallel`` at a time) spread over the ``--device`` list; each writes
``<out-dir>/rows/<row>-s<seed>.json`` after every evaluation, and the parent re-renders ``quality-<device>.json``
/ ``.md`` / ``.png`` whenever a row stops, so a run cut short still leaves data. The report gives per row the
mean +- std over seeds, the per-seed values, the best evaluation, the deltas to the best QAT and the best dense
row at the last step all rows reached, training-state bytes per weight (``ternary_audit``; for float rows the
fp32 parameters + the two fp32 AdamW moments, 12 bytes per float weight, plus the embedding's integer state, over
all weights), peak GPU memory of that process (``torch.cuda.max_memory_allocated``), training tokens/s (steps
only, evaluation excluded; rows share the GPU, so this is throughput *under contention*).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitor.train.checkpoint import atomic_write_bytes  # noqa: E402
from benchmarks._device import device_tag  # noqa: E402

# The embedding's scale group of every row: 4, the model default when the studies ran (issue 18 moved the
# default to 64), so the published rows stay reproducible.
STUDY_EMBEDDING_GROUP = 4
SHAPES = {
    # nanoGPT shakespeare_char: n_layer 6, n_head 6, n_embd 384, block_size 256, batch_size 64
    "nanogpt": {"model": {"d_model": 384, "n_layers": 6, "n_heads": 6, "mlp_mult": 4, "max_ctx": 256},
                "batch": 64, "ctx": 256},
    # the second scale (issue 18): 9 blocks x 16 * 640**2 projection weights (attention 5, LTI readout 3, MLP 8)
    # + embedding and head = 59.3 M weights at the byte vocabulary (ternary_audit; 12 blocks would be 79.0 M)
    "gpt60m": {"model": {"d_model": 640, "n_layers": 9, "n_heads": 10, "mlp_mult": 4, "max_ctx": 512},
               "batch": 32, "ctx": 512},
    # for a CPU pre-study of the rows (2 cores: minutes, not hours)
    "cpu": {"model": {"d_model": 128, "n_layers": 2, "n_heads": 4, "mlp_mult": 4, "max_ctx": 64},
            "batch": 16, "ctx": 64},
    # for the CPU test of the machinery
    "tiny": {"model": {"d_model": 128, "n_layers": 1, "n_heads": 4, "mlp_mult": 2, "max_ctx": 32},
             "batch": 4, "ctx": 32},
}

# The study's settings: DEFAULTS, then the recipe's, then every flag given. eval_every 0: six evaluations;
# final_eval_batches 0: as eval_batches.
DEFAULTS = {"shape": "nanogpt", "steps": 600, "eval_every": 0, "eval_at": "", "eval_batches": 8,
            "final_eval_batches": 0, "schedule": "constant", "warmup_steps": 0, "min_rate_ratio": 0.1,
            "schedule_hold": 1, "dropout": 0.0, "adam_beta2": 0.999, "weight_decay": 0.0, "grad_clip": 0.0,
            "vocab": "char", "compute_dtype": "float32"}
RECIPES: dict[str, dict] = {
    "default": {},
    # nanoGPT config/train_shakespeare_char.py: max_iters = lr_decay_iters = 5000, warmup 100, lr 1e-3 -> min_lr
    # 1e-4, beta2 0.99, dropout 0.2, eval_interval 250, eval_iters 200 (weight decay 0.1 and grad_clip 1.0 from
    # train.py's defaults)
    "nanogpt-full": {"shape": "nanogpt", "steps": 5000, "eval_every": 250, "eval_batches": 40,
                     "final_eval_batches": 200, "schedule": "cosine", "warmup_steps": 100, "min_rate_ratio": 0.1,
                     "schedule_hold": 25, "dropout": 0.2, "adam_beta2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0,
                     "vocab": "char"},
    # the second scale: >= 100 M tokens per row (6200 x 32 x 512 = 101.6 M), warm-up 2 %, no dropout; the float
    # rows' AdamW as nanoGPT's train.py (GPT-2): beta2 0.95, weight decay 0.1, grad_clip 1.0
    "scale-100m": {"shape": "gpt60m", "steps": 6200, "eval_every": 500, "eval_batches": 40,
                   "final_eval_batches": 200, "schedule": "cosine", "warmup_steps": 124, "min_rate_ratio": 0.1,
                   "schedule_hold": 25, "dropout": 0.0, "adam_beta2": 0.95, "weight_decay": 0.1, "grad_clip": 1.0,
                   "vocab": "byte"},
}
# name -> (label, ModelConfig changes; "ternary" holds the TernaryConfig changes)
ROWS: dict[str, tuple[str, dict]] = {
    "dense": ("dense float, AdamW lr 1e-3", {"linear": "dense", "dense_lr": 1e-3}),
    "bitnet": ("BitNet b1.58 QAT, AdamW lr 1e-3", {"linear": "bitnet", "dense_lr": 1e-3}),
}
# The dense legacy rule, the stateless "flip" rule and the leaky window lost the study (docs/quality.md keeps
# their rows as history) and were removed with arbitor 0.2.


def float_row(linear: str, lr_text: str) -> str:
    """Register (once) and name a float row ``dense-lr<lr>`` / ``bitnet-lr<lr>`` (``lr_text`` as written)."""
    lr = float(lr_text)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning rate must be > 0, got {lr_text}")
    name = f"{linear}-lr{lr_text}"
    what = "dense float" if linear == "dense" else "BitNet b1.58 QAT"
    ROWS.setdefault(name, (f"{what}, AdamW lr {lr:g}", {"linear": linear, "dense_lr": lr}))
    return name


def bigint_row(group: int, strength: float) -> str:
    """Register (once) and name a row of the spec's bigint rule, ``bigint-g<group>-s<strength>``."""
    name = f"bigint-g{group}-s{strength:g}"
    ROWS.setdefault(name, (f"arbitor bigint (spec), group {group}, strength {strength:g}",
                           {"ternary": {"update_rule": "bigint", "group_size": group, "strength": float(strength)}}))
    return name


def counter_row(bits: int, rate: float, group: int, strength: float = 16.0) -> str:
    """Register (once) and name a row of the counter rule (issue 6's gap-closing mode)."""
    name = f"counter-b{bits}-r{rate:g}-g{group}" + ("" if strength == 16.0 else f"-s{strength:g}")
    ROWS.setdefault(name, (
        (f"arbitor counter (BigInt + trits on {bits}-bit packed counters, rate {rate:g}), group {group}, "
         f"strength {strength:g}"),
        {"ternary": {"update_rule": "counter", "group_size": group, "strength": strength, "counter_bits": bits,
                          "counter_rate": rate}}))
    return name


_NUM = r"([0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)"
FP8_SUFFIX = "-fp8"   # a ternary row's name + this: the same row with TernaryConfig.gradw_fp8
FP8ALL_SUFFIX = "-fp8all"   # ... + this: with gradw_fp8 and matmul_fp8 (the forward and grad-x in fp8 too)


def resolve_row(name: str) -> bool:
    """Register a row named in one of the forms of the module doc; False if ``name`` is none of them."""
    if name in ROWS:
        return True
    for suffix, what, fp8 in ((FP8_SUFFIX, "grad_W from fp8 operands", {"gradw_fp8": True}),
                              (FP8ALL_SUFFIX, "every matmul from fp8 operands",
                               {"gradw_fp8": True, "matmul_fp8": True})):
        base = name[:-len(suffix)] if name.endswith(suffix) else None
        if base and resolve_row(base) and "ternary" in ROWS[base][1]:   # a ternary row with fp8 matmuls
            label, changes = ROWS[base]
            ROWS[name] = (f"{label}, {what}", {**changes, "ternary": {**changes["ternary"], **fp8}})
            return True
    try:
        m = re.fullmatch(r"(dense|bitnet)-lr" + _NUM, name)
        if m:
            return float_row(m.group(1), m.group(2)) == name
        m = re.fullmatch(r"bigint-g([0-9]+)-s" + _NUM, name)
        if m:
            return bigint_row(int(m.group(1)), float(m.group(2))) == name
        m = re.fullmatch(r"counter-b([0-9]+)-r" + _NUM + r"-g([0-9]+)(?:-s" + _NUM + ")?", name)
        if m:
            strength = float(m.group(4)) if m.group(4) else 16.0
            return counter_row(int(m.group(1)), float(m.group(2)), int(m.group(3)), strength) == name
    except ValueError:
        return False
    return False


for _g in (32, 64, 128):
    for _s in (4, 16):
        bigint_row(_g, _s)
for _b, _r, _g in ((2, 0.5, 32), (4, 2.0, 64), (4, 1.0, 64)):
    counter_row(_b, _r, _g)
BASE_ROWS = list(ROWS)   # the rows a call without --rows runs (the first studies' table)

# Issue 18's tuning grid: three step sizes per family, centred on the best settings of docs/quality.md (counter
# b4 r0.5 g128 at +0.090; the float rows ran nanoGPT's lr 1e-3 only -- QAT's grid reaches higher, as BitNet
# b1.58 trains with larger rates). bigint has no step size: one row (the final study's).
TUNE = {
    "dense": ["dense-lr6e-4", "dense-lr1e-3", "dense-lr2e-3"],
    "bitnet": ["bitnet-lr1e-3", "bitnet-lr2e-3", "bitnet-lr3e-3"],
    "counter": ["counter-b4-r0.25-g128", "counter-b4-r0.5-g128", "counter-b4-r1-g128"],
    "bigint": ["bigint-g32-s16"],
}
ROW_SETS = {"tune": [n for rows in TUNE.values() for n in rows], **{f"tune-{k}": v for k, v in TUNE.items()}}
for _n in ROW_SETS["tune"]:
    resolve_row(_n)

FLOAT_STATE_BYTES = 12  # fp32 weight + AdamW exp_avg + exp_avg_sq (gradients are transient)
TERMINAL = ("done", "diverged")   # statuses a later call does not resume


def row_file(name: str, seed: int) -> str:
    return f"{name}-s{seed}"


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


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


def _evaluate(trainer, batches: int) -> dict:
    """The trainer's validation on ``batches`` batches (the first ones of its fixed windows)."""
    tc = trainer.tcfg
    trainer.tcfg = dataclasses.replace(tc, eval_batches=batches)
    try:
        return trainer.evaluate()
    finally:
        trainer.tcfg = tc


def eval_steps(st: dict) -> list[int]:
    """The steps evaluated after step 0 (the last step always)."""
    steps = st["steps"]
    if st["eval_at"]:
        at = {int(s) for s in str(st["eval_at"]).split(",") if s}
    else:
        every = st["eval_every"] or max(1, steps // 6)
        at = set(range(every, steps + 1, every))
    return sorted(s for s in at | {steps} if 0 < s <= steps)


def train_config(st: dict, seed: int, fast: dict):
    from arbitor.train import TrainConfig
    shape = SHAPES[st["shape"]]
    return TrainConfig(steps=st["steps"], batch=shape["batch"], ctx=shape["ctx"], eval_interval=0,
                       eval_batches=st["eval_batches"], log_interval=0, seed=seed, schedule=st["schedule"],
                       warmup_steps=st["warmup_steps"], min_rate_ratio=st["min_rate_ratio"],
                       schedule_hold=st["schedule_hold"], adam_beta2=st["adam_beta2"],
                       weight_decay=st["weight_decay"], grad_clip=st["grad_clip"], **fast)


def fast_settings(st: dict, overrides: dict, device: str) -> dict:
    """``compile`` / ``cuda_graph`` of a row: ternary rows as ``fast_ternary`` says (graphed when the study has
    no such key: the studies before it), float rows as ``fast_float`` says."""
    if not st["fast"] or not device.startswith("cuda"):
        return {}
    modes = {"compile+graph": {"compile": True, "cuda_graph": True}, "graph": {"cuda_graph": True},
             "compile": {"compile": True}, "none": {}}
    if overrides.get("linear", "ternary") == "ternary":
        return modes[st.get("fast_ternary", "graph")]
    return modes[st["fast_float"]]


def run_row(args) -> int:
    import torch

    from arbitor.train import CHECKPOINT_NAME, ModelSettings, TextConfig, build_run

    out = Path(args.out_dir)
    st = json.loads((out / "study.json").read_text())["settings"]
    name, seed = args.row, args.seed
    resolve_row(name)
    label, overrides = ROWS[name]
    shape = SHAPES[st["shape"]]
    path = out / "rows" / f"{row_file(name, seed)}.json"
    run_dir = out / "runs" / row_file(name, seed)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        if dev.index is not None:      # "cuda" alone: the current device (set_device needs an index)
            torch.cuda.set_device(dev)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, every row alike
    fast = fast_settings(st, overrides, args.device)
    at = eval_steps(st)
    final_batches = st["final_eval_batches"] or st["eval_batches"]
    rec = json.loads(path.read_text()) if path.exists() else {}
    rec.update({"name": name, "seed": seed, "label": label, "overrides": overrides, "shape": st["shape"],
                "recipe": st["recipe"], "batch": shape["batch"], "ctx": shape["ctx"], "steps_target": st["steps"],
                "mode": "+".join(k for k in ("compile", "cuda_graph") if fast.get(k)) or "eager",
                "status": "running"})
    rec.setdefault("evals", [])
    rec.setdefault("step", 0)
    rec.setdefault("train_s", 0.0)
    rec.setdefault("timed_tokens", 0)
    rec.setdefault("calls", 0)
    rec["calls"] += 1

    def save():
        _write_json(path, rec)

    trainer = None
    try:
        tcfg = train_config(st, seed, fast)
        text = TextConfig(text_data=st["data"], vocab=st["vocab"], val_fraction=0.1)
        resume = (run_dir / CHECKPOINT_NAME).exists()
        fields = dict(shape["model"], embedding_group_size=STUDY_EMBEDDING_GROUP, dropout=st["dropout"],
                      compute_dtype=st["compute_dtype"], **overrides)
        # the "small" preset's ternary settings, the shape's size, the row's changes; the seed (TrainConfig.seed)
        # seeds the model init, the data order and the validation windows
        trainer = build_run("text", tcfg, text, ModelSettings(preset="small"), run_dir=run_dir, resume=resume,
                            device=args.device, model_fields=fields)
        # evaluations after the checkpoint's step belong to a run that died before its checkpoint: redone below
        rec["evals"] = [e for e in rec["evals"] if e["step"] <= trainer.step]
        rec["step"] = trainer.step
        rec.update(_state_bytes_per_weight(trainer.model))
        rec["device_name"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        if not rec["evals"] and trainer.step == 0:
            first = _evaluate(trainer, st["eval_batches"])
            rec["evals"].append({"step": 0, "tokens": 0, **first})
            save()
        t0, tok0 = time.perf_counter(), trainer.tokens_seen

        def clock():            # this call's training time so far (evaluations are excluded below)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return time.perf_counter() - t0, trainer.tokens_seen - tok0

        train_s, timed = 0.0, 0
        while trainer.step < st["steps"]:
            stop = ("deadline" if time.time() > args.deadline else
                    "paused" if args.stop_at and trainer.step >= args.stop_at else None)
            if stop:
                s, n = clock()
                train_s, timed = train_s + s, timed + n
                trainer.save()          # the next call resumes here
                rec["status"] = stop
                break
            losses = trainer.train_step()
            if trainer.step in at:
                s, n = clock()
                train_s, timed = train_s + s, timed + n
                loss = float(sum(losses.values()))
                if not math.isfinite(loss):
                    rec["status"] = f"diverged: non-finite loss at step {trainer.step}"
                    break
                last = trainer.step == st["steps"]
                ev = _evaluate(trainer, final_batches if last else st["eval_batches"])
                entry = {"step": trainer.step, "tokens": trainer.tokens_seen, "train_loss": loss, **ev}
                if last and final_batches != st["eval_batches"]:
                    entry["eval_batches"] = final_batches
                    entry["val_loss_short"] = _evaluate(trainer, st["eval_batches"])["val_loss"]
                rec["evals"] = [e for e in rec["evals"] if e["step"] != trainer.step] + [entry]
                rec["step"] = trainer.step
                rec["train_s"] += train_s
                rec["timed_tokens"] += timed
                rec["tokens_per_s"] = rec["timed_tokens"] / max(rec["train_s"], 1e-9)
                train_s, timed = 0.0, 0
                if dev.type == "cuda":
                    rec["peak_mem_mb"] = max(rec.get("peak_mem_mb", 0.0),
                                             torch.cuda.max_memory_allocated(dev) / 2 ** 20)
                if trainer.graphed is not None:
                    rec["graph_captures"] = rec.get("graph_captures", 0) + trainer.graphed.captures
                    trainer.graphed.captures = 0
                save()                  # the evaluation first: a crash before the checkpoint redoes it
                trainer.save()
                t0, tok0 = time.perf_counter(), trainer.tokens_seen
        else:
            rec["status"] = "done"
        rec["step"] = trainer.step
        rec["train_s"] += train_s
        rec["timed_tokens"] += timed
        if rec["train_s"] > 0:
            rec["tokens_per_s"] = rec["timed_tokens"] / rec["train_s"]
        if dev.type == "cuda":
            rec["peak_mem_mb"] = max(rec.get("peak_mem_mb", 0.0), torch.cuda.max_memory_allocated(dev) / 2 ** 20)
        if trainer.graphed is not None:
            rec["graph_captures"] = rec.get("graph_captures", 0) + trainer.graphed.captures
    except Exception as exc:  # noqa: BLE001 -- record it and keep the other rows going (the next call retries)
        traceback.print_exc()
        rec["status"] = f"error: {type(exc).__name__}: {' '.join(str(exc).split())}"[:400]
    finally:
        if trainer is not None:
            trainer.close()
    save()
    print(f"[{row_file(name, seed)}] {rec['status']} at step {rec['step']}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------ report
#: settings that may differ between studies merged into one report (the data's path and the speed modes; the
#: data's digest, the model, the recipe and every training setting must be equal)
MERGE_FREE_SETTINGS = ("data", "fast", "fast_float", "fast_ternary")


def settings_diff(a: dict, b: dict, free: tuple = ()) -> list[str]:
    """The keys, sorted, whose values differ between two studies' settings, over the keys of *either* side (a
    setting recorded only when not its default, like ``fast_ternary``, must not pass silently when the other side
    left it at the default), ``free`` aside."""
    return [k for k in sorted(set(a) | set(b)) if k not in free and a.get(k) != b.get(k)]


def merge_reports(out_dir: Path, sources: list[Path], meta: dict) -> dict:
    """Add the rows of other studies' reports (``quality-<device>.json``, e.g. calls run with another ``--out-dir``
    or fetched from another machine) to ``out_dir``: each row with evaluations becomes ``rows/<row>-s<seed>.json``
    (replacing a stored one only if it reached at least as far), its commands and row names join ``meta``.
    Raises ``ValueError`` naming the file and the first setting that differs (``MERGE_FREE_SETTINGS`` aside);
    every report is checked before any row is written."""
    meta = dict(meta)
    reports = []
    for src in sources:
        try:
            rep = json.loads(Path(src).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--merge {src}: not a readable quality report ({exc})") from None
        st = (rep.get("meta") or {}).get("settings") or {}
        mine = meta.setdefault("settings", st)
        diff = settings_diff(mine, st, MERGE_FREE_SETTINGS)
        if diff:
            k = diff[0]
            raise ValueError(f"--merge {src}: setting {k}={st.get(k)!r} differs from {out_dir}'s {mine.get(k)!r} "
                             "(only the data path and the speed modes may differ)")
        reports.append(rep)
    (out_dir / "rows").mkdir(parents=True, exist_ok=True)
    for rep in reports:
        for r in rep.get("rows", []):
            if not r.get("evals"):
                continue                                   # a row that failed before its first evaluation
            dest = out_dir / "rows" / f"{row_file(r['name'], r.get('seed', 0))}.json"
            if dest.exists() and json.loads(dest.read_text()).get("step", 0) > r.get("step", 0):
                continue
            _write_json(dest, r)
            if r["name"] not in meta.setdefault("rows", []):
                meta["rows"].append(r["name"])
        for c in (rep.get("meta") or {}).get("commands", []) or [rep.get("command", "")]:
            if c and c not in meta.setdefault("commands", []):
                meta["commands"].append(c)
    return meta


def _device_slug(rows: list[dict], fallback: str) -> str:
    for r in rows:
        d = r.get("device_name", "")
        if d:
            return device_tag(d)
    return fallback


def _loss_at(r: dict, s: int):
    return next((e["val_loss"] for e in r["evals"] if e["step"] == s), None)


def _mean_std(v: list[float]) -> tuple[float, float]:
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)


def _family(r: dict) -> str:
    linear = r.get("overrides", {}).get("linear", "ternary")
    return linear if linear != "ternary" else r.get("overrides", {}).get("ternary", {}).get("update_rule", "ternary")


def summarize(rows: list[dict], order: list[str]) -> dict:
    """Per row name: the seeds, the mean / std / n over seeds at every step, the per-seed values and the best."""
    names = [n for n in order if any(r["name"] == n for r in rows)]
    names += sorted({r["name"] for r in rows} - set(names))
    steps = sorted({e["step"] for r in rows for e in r["evals"] if e["step"] > 0})
    # the common step: the last one every row and seed reached; rows that failed (an error, a crash, a divergence)
    # do not hold the others back (their cells stay empty)
    live = [r for r in rows if str(r.get("status", "")).split(":")[0] in ("done", "running", "deadline", "paused")]
    common = max([s for s in steps if all(_loss_at(r, s) is not None for r in live or rows)], default=0)
    out = {}
    for n in names:
        rs = sorted((r for r in rows if r["name"] == n), key=lambda r: r.get("seed", 0))
        curve = {}
        for s in [0] + steps:
            v = [x for x in (_loss_at(r, s) for r in rs) if x is not None and math.isfinite(x)]
            if v:
                m, sd = _mean_std(v)
                curve[s] = {"mean": m, "std": sd, "n": len(v)}
        best = min(((c["mean"], s) for s, c in curve.items() if s > 0 and c["n"] == len(rs)), default=None)
        out[n] = {"family": _family(rs[0]), "label": rs[0].get("label", ""), "seeds": [r.get("seed", 0) for r in rs],
                  "curve": curve, "at_common": {str(r.get("seed", 0)): _loss_at(r, common) for r in rs},
                  "best": {"mean": best[0], "step": best[1]} if best else None,
                  "status": sorted({str(r.get("status", "")).split(":")[0] for r in rs})}
    return {"steps": steps, "common_step": common, "rows": out}


def _reference(summary: dict, family: str, pinned: str | None) -> str | None:
    """The row deltas are taken against: ``pinned``, or the family's row with the lowest mean at the common step."""
    rows, common = summary["rows"], summary["common_step"]
    if pinned:
        return pinned if pinned in rows else None
    cands = [(r["curve"][common]["mean"], n) for n, r in rows.items()
             if r["family"] == family and common in r["curve"]]
    return min(cands)[1] if cands else None


def _delta(summary: dict, name: str, ref: str | None):
    """Mean over the seeds both rows have of (row - ref) at the common step, and its n."""
    if ref is None:
        return None
    a, b = summary["rows"][name]["at_common"], summary["rows"][ref]["at_common"]
    d = [a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None]
    return (sum(d) / len(d), len(d)) if d else None


def _code(name: str | None) -> str:
    return f"`{name}`" if name else "none (no such row)"


def _columns(steps: list[int], common: int, k: int = 8) -> list[int]:
    """At most ``k`` evaluation steps for the table (spread evenly, the common and the last step always)."""
    if len(steps) <= k:
        return steps
    pick = {steps[round(i * (len(steps) - 1) / (k - 1))] for i in range(k)} | {common, steps[-1]}
    return sorted(s for s in pick if s > 0)


def aggregate(out_dir: Path, device_name: str | None = None, command: str = "", meta: dict | None = None,
              plot: bool = True) -> dict:
    rows_dir = out_dir / "rows"
    rows = [json.loads(p.read_text()) for p in sorted(rows_dir.glob("*.json"))] if rows_dir.exists() else []
    for r in rows:
        r.setdefault("seed", 0)
    meta = meta or {}
    order = [n for n in meta.get("rows", [])] + list(ROWS)
    summary = summarize(rows, order)
    slug = device_name or _device_slug(rows, "unknown")
    steps, common = summary["steps"], summary["common_step"]
    refs = {"qat": _reference(summary, "bitnet", meta.get("qat_row")),
            "dense": _reference(summary, "dense", meta.get("dense_row"))}
    for n in summary["rows"]:
        for k, ref in refs.items():
            d = _delta(summary, n, ref)
            summary["rows"][n][f"vs_{k}"] = {"delta": d[0], "n": d[1]} if d else None
    result = {"device": slug, "command": command, "meta": meta, "eval_steps": steps, "common_step": common,
              "references": refs, "summary": summary["rows"],
              "rows": sorted(rows, key=lambda r: (order.index(r["name"]) if r["name"] in order else 999,
                                                  r["seed"]))}
    first = next((r for r in rows if "batch" in r), None)
    if first:
        result["tokens_per_step"] = first["batch"] * first["ctx"]
    _write_json(out_dir / f"quality-{slug}.json", result)
    # markdown
    lines = [f"# Quality study ({slug})", ""]
    for c in meta.get("commands", [command] if command else []):
        lines.append(f"Command: `{c}`")
    lines.append("")
    if first:
        tps = first["batch"] * first["ctx"]
        st = meta.get("settings", {})
        lines.append(f"Shape {first['shape']}: batch {first['batch']} x ctx {first['ctx']} = {tps:,} tokens/step"
                     + (f"; recipe {st.get('recipe')}, {st.get('vocab')} vocabulary, dropout {st.get('dropout')}, "
                        f"schedule {st.get('schedule')} (warm-up {st.get('warmup_steps')}, floor "
                        f"{st.get('min_rate_ratio')}, held {st.get('schedule_hold')} steps), float rows AdamW beta2 "
                        f"{st.get('adam_beta2')}, weight decay {st.get('weight_decay')}, clip {st.get('grad_clip')}"
                        if st else "") + ".")
        lines.append(f"Validation loss in nats/token, mean over seeds (+- sample std). Common step (all rows and "
                     f"seeds reached): {common} ({common * tps:,} tokens). Deltas at the common step, paired by "
                     f"seed, against the best row of each float family: QAT = {_code(refs['qat'])}, dense = "
                     f"{_code(refs['dense'])}.")
        lines.append("")
    cols = _columns(steps, common)
    hdr = (["row", "seeds"] + [f"@{s}" for s in cols] + [f"@{common} mean +- std", "per seed", "best (step)",
                                                          "vs QAT", "vs dense", "state B/weight", "peak GPU MB",
                                                          "tok/s", "status"])
    lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for n, sr in summary["rows"].items():
        rs = [r for r in rows if r["name"] == n]
        cells = [n, ",".join(str(s) for s in sr["seeds"])]
        for s in cols:
            c = sr["curve"].get(s)
            cells.append(f"{c['mean']:.4f}" + ("" if c["n"] == len(rs) else f" (n={c['n']})") if c else "")
        c = sr["curve"].get(common)
        cells.append(f"{c['mean']:.4f} +- {c['std']:.4f}" if c else "")
        cells.append(" / ".join(f"{v:.4f}" for v in sr["at_common"].values() if v is not None))
        cells.append(f"{sr['best']['mean']:.4f} ({sr['best']['step']})" if sr["best"] else "")
        for k in ("vs_qat", "vs_dense"):
            d = sr[k]
            cells.append(f"{d['delta']:+.3f}" if d else "")
        bpw = rs[0].get("state_bytes_per_weight")
        cells.append(f"{bpw:.3f}" if bpw is not None else "")
        pm = [r["peak_mem_mb"] for r in rs if r.get("peak_mem_mb")]
        cells.append(f"{max(pm):,.0f}" if pm else "")
        t = [r["tokens_per_s"] for r in rs if r.get("tokens_per_s")]
        cells.append(f"{sum(t) / len(t):,.0f}" if t else "")
        cells.append(", ".join(f"s{r['seed']} {str(r.get('status', '')).split(':')[0]}@{r.get('step', 0)}"
                               for r in sorted(rs, key=lambda r: r["seed"])))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Rows:", ""] + [f"- `{n}`: {sr['label']}" for n, sr in summary["rows"].items()]
    errors = [r for r in rows if str(r.get("status", "")).startswith(("error", "crashed", "killed"))]
    if errors:
        lines += ["", "Problems:", ""] + [f"- `{row_file(r['name'], r['seed'])}`: {r['status']}" for r in errors]
    (out_dir / f"quality-{slug}.md").write_text("\n".join(lines) + "\n")
    if plot:
        _plot(out_dir / f"quality-{slug}.png", summary, rows, result.get("tokens_per_step", 0), slug, meta)
    return result


def _plot(path: Path, summary: dict, rows: list[dict], tokens_per_step: int, slug: str, meta: dict) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG (re-render with --aggregate)", flush=True)
        return
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for n, sr in summary["rows"].items():
        pts = [(s, c["mean"]) for s, c in sorted(sr["curve"].items()) if c["mean"] < 6]
        if not pts:
            continue
        fam = sr["family"]
        style = "-" if fam in ("dense", "bitnet") else ("--" if fam == "counter" else ":")
        line, = ax.plot(*zip(*pts), style, marker="o", ms=2.5, lw=1.8 if fam in ("dense", "bitnet") else 1.2,
                        label=n + (f" ({len(sr['seeds'])} seeds)" if len(sr["seeds"]) > 1 else ""))
        if len(sr["seeds"]) > 1:       # the seeds' spread
            band = [(s, min(v), max(v)) for s in sorted(sr["curve"]) if s > 0 and sr["curve"][s]["mean"] < 6
                    for v in [[x for x in (_loss_at(r, s) for r in rows if r["name"] == n) if x is not None]] if v]
            if band:
                xs, lo, hi = zip(*band)
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    lows = [c["mean"] for sr in summary["rows"].values() for s, c in sr["curve"].items() if s > 0]
    if lows:    # the interesting range: from the best loss up by 0.8 nats (the first steps and overfit tails clip)
        ax.set_ylim(min(lows) - 0.03, min(lows) + 0.8)
    ax.set_xlabel(f"step (x {tokens_per_step} tokens)")
    ax.set_ylabel("validation loss, nats/token")
    st = meta.get("settings", {})
    data = Path(st.get("data", "")).name if st else ""
    ax.set_title(f"arbitor quality study{', ' + st['recipe'] if st else ''}{', ' + data if data else ''} ({slug})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ parent
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="?", help="UTF-8 text file, or a .gz of one (decompressed into the out dir)")
    ap.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    ap.add_argument("--rows", default=None, help=f"comma list of row names or sets ({', '.join(ROW_SETS)}); default: "
                                                 "the dense, bitnet, bigint and counter rows of the table")
    ap.add_argument("--seeds", default=None, help="comma list of seeds; each row runs once per seed (default 0)")
    ap.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds S)")
    ap.add_argument("--device", default="cuda", help="torch device, or a comma list: rows are spread over them")
    ap.add_argument("--fp8-every-layer", action="store_true",
                    help="-fp8 / -fp8all rows use fp8 in every layer whose sides are multiples of 16, not only where "
                         "it pays (ternary/ops/fp8.py fp8_pays, fp8_matmul_pays): the study shapes are below their "
                         "thresholds")
    ap.add_argument("--out-dir", default="benchmarks/results/quality/latest")
    ap.add_argument("--parallel", type=int, default=0, help="rows at a time (0: all)")
    ap.add_argument("--time-limit", type=float, default=520.0,
                    help="seconds; workers stop at their next step and checkpoint (status deadline)")
    ap.add_argument("--grace", type=float, default=60.0, help="seconds after the time limit before a worker is killed")
    ap.add_argument("--stop-at", type=int, default=0,
                    help="stop every row at this step in this call, with a checkpoint (status paused)")
    ap.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                    help="CUDA graphs (ternary rows) and --fast-float (float rows); default: on for CUDA")
    ap.add_argument("--fast-float", default="compile+graph", choices=("compile+graph", "graph", "compile", "none"),
                    help="what --fast does for the float rows")
    ap.add_argument("--fast-ternary", default="graph", choices=("graph", "compile+graph"),
                    help="what --fast does for the ternary rows (the studies so far: graph)")
    g = ap.add_argument_group("study settings (default: the recipe's)")
    g.add_argument("--shape", default=None, choices=sorted(SHAPES))
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (0: six evaluations)")
    g.add_argument("--eval-at", default=None, help="comma list of steps to evaluate (instead of --eval-every)")
    g.add_argument("--eval-batches", type=int, default=None, help="validation batches of an intermediate evaluation")
    g.add_argument("--final-eval-batches", type=int, default=None,
                   help="validation batches at the last step (0: as --eval-batches)")
    g.add_argument("--schedule", default=None, choices=("constant", "cosine"),
                   help="every row alike: AdamW lr and the ternary rules' rates (TrainConfig.schedule)")
    g.add_argument("--warmup-steps", type=int, default=None)
    g.add_argument("--min-rate-ratio", type=float, default=None)
    g.add_argument("--schedule-hold", type=int, default=None,
                   help="hold the schedule's factor for blocks of N steps (CUDA graphs re-capture once per block)")
    g.add_argument("--dropout", type=float, default=None)
    g.add_argument("--adam-beta2", type=float, default=None, help="float rows")
    g.add_argument("--weight-decay", type=float, default=None, help="float rows (parameters of >= 2 dimensions)")
    g.add_argument("--grad-clip", type=float, default=None, help="float rows (0: none)")
    g.add_argument("--vocab", default=None, choices=("char", "byte"))
    g.add_argument("--compute-dtype", default=None, choices=("float32", "bfloat16"),
                   help="activation dtype (bfloat16 also stores the dense rows' weights in bf16)")
    ap.add_argument("--qat-row", default=None,
                    help="the row QAT deltas are taken against (default: the best bitnet row)")
    ap.add_argument("--dense-row", default=None, help="likewise for the dense deltas")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    ap.add_argument("--aggregate", help="only re-render the report of this out dir")
    ap.add_argument("--merge", nargs="+", default=None, metavar="REPORT",
                    help="with --aggregate: first add the rows and commands of these quality-<device>.json reports "
                         "(same data and settings; the speed modes may differ)")
    ap.add_argument("--device-name", default=None)
    return ap


def resolve_settings(args) -> dict:
    st = dict(DEFAULTS, **RECIPES[args.recipe])
    for k in DEFAULTS:
        v = getattr(args, k, None)
        if v is not None:
            st[k] = v
    if args.eval_every is not None and args.eval_at is None:
        st["eval_at"] = ""
    st["recipe"] = args.recipe
    return st


def _check_settings(ap, st: dict) -> None:
    from arbitor.train import TrainConfig
    if st["steps"] < 1 or st["eval_batches"] < 1 or st["final_eval_batches"] < 0 or st["eval_every"] < 0:
        ap.error("--steps and --eval-batches must be >= 1, --final-eval-batches and --eval-every >= 0")
    if not 0.0 <= st["dropout"] < 1.0:
        ap.error(f"--dropout must be in [0, 1), got {st['dropout']}")
    try:
        TrainConfig(steps=st["steps"], schedule=st["schedule"], warmup_steps=st["warmup_steps"],
                    min_rate_ratio=st["min_rate_ratio"], schedule_hold=st["schedule_hold"],
                    adam_beta2=st["adam_beta2"], weight_decay=st["weight_decay"], grad_clip=st["grad_clip"])
        [int(s) for s in str(st["eval_at"]).split(",") if s]
    except ValueError as exc:
        ap.error(" ".join(str(exc).split()))


def prepare_data(ap, data: str, out: Path) -> str:
    """The text file the rows read: ``data`` itself, or for a ``.gz`` its decompressed copy in ``<out>/data``."""
    src = Path(data)
    if not src.is_file():
        ap.error(f"data file not found: {data}")
    if src.suffix != ".gz":
        return data
    dst = out / "data" / src.stem
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        with gzip.open(src, "rb") as fi, open(tmp, "wb") as fo:
            shutil.copyfileobj(fi, fo, 2 ** 22)
        os.replace(tmp, dst)
    return str(dst)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2 ** 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _seeds(ap, args) -> list[int]:
    text = args.seeds if args.seeds is not None else str(args.seed if args.seed is not None else 0)
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds must be a comma list of integers, got {text!r}")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        ap.error(f"--seeds must name distinct seeds >= 0, got {text!r}")
    return seeds


def _row_names(ap, text: str | None) -> list[str]:
    if text is None:
        return list(BASE_ROWS)
    names: list[str] = []
    for n in (x.strip() for x in text.split(",")):
        for m in ROW_SETS.get(n, [n] if n else []):
            if m not in names:
                names.append(m)
    unknown = [n for n in names if not resolve_row(n)]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {', '.join(ROWS)} and the forms dense-lr<x>, bitnet-lr<x>, "
                 "bigint-g<G>-s<S>, counter-b<B>-r<R>-g<G>[-s<S>]; sets: " + ", ".join(ROW_SETS))
    return names


def _mark(path: Path, status: str) -> None:
    """Record ``status`` in a row file whose worker could not (it died); a new file if it never wrote one."""
    rec = json.loads(path.read_text()) if path.exists() else {}
    if not rec:
        name, _, seed = path.stem.rpartition("-s")
        resolve_row(name)
        rec = {"name": name, "seed": int(seed), "label": ROWS.get(name, ("", {}))[0],
               "overrides": ROWS.get(name, ("", {}))[1], "evals": [], "step": 0}
    rec["status"] = status
    _write_json(path, rec)


def row_command(args, name: str, seed: int, device: str, out: Path, deadline: float) -> list[str]:
    """The command of the subprocess that runs row ``name`` with ``seed`` on ``device``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--row", name, "--seed", str(seed), "--device", device,
           "--out-dir", str(out), "--deadline", str(deadline), "--stop-at", str(args.stop_at)]
    return cmd + (["--fp8-every-layer"] if args.fp8_every_layer else [])


def fp8_every_layer() -> None:
    """fp8 in every layer whose sides allow it (``--fp8-every-layer``), not only where it was measured to pay: the
    study's shapes are all below ``fp8.fp8_pays``'s and ``fp8.fp8_matmul_pays``'s thresholds, which would leave the
    ``-fp8`` rows equal to the exact ones."""
    from arbitor.ternary.ops import fp8
    fp8.FP8_MIN_WEIGHTS = fp8.FP8_MIN_FEATURES = 0


def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.aggregate:
        prev = {}
        for p in Path(args.aggregate).glob("quality-*.json"):
            prev = json.loads(p.read_text())
        meta = prev.get("meta") or {}
        if args.qat_row or args.dense_row:
            meta.update({k: v for k, v in (("qat_row", args.qat_row), ("dense_row", args.dense_row)) if v})
        if args.merge:
            try:
                meta = merge_reports(Path(args.aggregate), [Path(m) for m in args.merge], meta)
            except ValueError as exc:
                ap.error(str(exc))
        aggregate(Path(args.aggregate), args.device_name or prev.get("device"), prev.get("command", ""), meta)
        return 0
    if args.merge:
        ap.error("--merge needs --aggregate OUT_DIR (the report the rows are added to)")
    if args.fp8_every_layer:
        fp8_every_layer()
    if args.row:
        return run_row(args)
    if not args.data:
        ap.error("DATA_PATH is required")
    names = _row_names(ap, args.rows)
    seeds = _seeds(ap, args)
    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    fast = args.fast if args.fast is not None else all(d.startswith("cuda") for d in devices)
    if fast and not all(d.startswith("cuda") for d in devices):
        ap.error("--fast needs CUDA devices (CUDA graphs); pass --no-fast")
    st = resolve_settings(args)
    _check_settings(ap, st)
    out = Path(args.out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    st["data"] = prepare_data(ap, args.data, out)
    st["fast"], st["fast_float"] = fast, args.fast_float if fast else "none"
    if fast and args.fast_ternary != "graph":      # recorded only when not the default: older studies resume
        st["fast_ternary"] = args.fast_ternary
    study = out / "study.json"
    if study.exists():
        old = json.loads(study.read_text())
        diff = [f"{k}={old['settings'].get(k)!r} (now {st.get(k)!r})"
                for k in settings_diff(old["settings"], st, ("data_sha256",))]
        if diff:
            ap.error(f"{out} holds a study with other settings: {', '.join(diff[:4])}; use another --out-dir")
        st = old["settings"]
        commands = old.get("commands", [])
    else:
        st["data_sha256"] = _sha256(st["data"])
        commands = []
    command = "PYTHONPATH=. python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    commands.append(command)
    _write_json(study, {"settings": st, "commands": commands})
    jobs = [(n, s) for s in seeds for n in names]     # seed by seed: a call cut short leaves whole seeds
    todo = []
    for n, s in jobs:
        p = out / "rows" / f"{row_file(n, s)}.json"
        status = json.loads(p.read_text()).get("status", "") if p.exists() else ""
        if str(status).split(":")[0] in TERMINAL:
            print(f"row {row_file(n, s)}: {status.split(':')[0]}, skipped", flush=True)
        else:
            todo.append((n, s))
    t_start = time.time()
    deadline = t_start + args.time_limit
    last_start = deadline - min(60.0, args.time_limit / 4)   # a row started later would only build and stop
    meta = {"settings": st, "commands": commands, "rows": names, "seeds": seeds, "time_limit_s": args.time_limit,
            "parallel": args.parallel or len(todo), "devices": devices, "qat_row": args.qat_row,
            "dense_row": args.dense_row}
    parallel = args.parallel or max(1, len(todo))
    running: dict[tuple[str, int], tuple[subprocess.Popen, str]] = {}
    last_plot = time.time()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")    # many rows compile at once
    while todo or running:
        while todo and len(running) < parallel and time.time() < last_start:
            n, s = todo.pop(0)
            load = {d: sum(1 for _, dd in running.values() if dd == d) for d in devices}
            dev = min(devices, key=lambda d: load[d])
            cmd = row_command(args, n, s, dev, out, deadline)
            with open(out / "logs" / f"{row_file(n, s)}.log", "a") as log:
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
                log.flush()
                running[(n, s)] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), dev)
        if todo and time.time() >= last_start:    # left for the next call
            todo.clear()
        done = [k for k, (p, _) in running.items() if p.poll() is not None]
        for k in done:
            p, _ = running.pop(k)
            path = out / "rows" / f"{row_file(*k)}.json"
            if p.returncode != 0:      # died without recording why (killed, out of memory, a crash)
                _mark(path, f"crashed: exit code {p.returncode} (log: logs/{row_file(*k)}.log)")
            print(f"row {row_file(*k)} stopped ({time.time() - t_start:.0f}s)", flush=True)
        if done:   # the report so far (the PNG at most once a minute: drawing it takes a second)
            meta["wall_s"] = time.time() - t_start
            plot = time.time() - last_plot > 60
            aggregate(out, args.device_name, command, meta, plot=plot)
            last_plot = time.time() if plot else last_plot
        if time.time() > deadline + args.grace:  # a worker stuck past its deadline (compiling, a long evaluation)
            for k, (p, _) in running.items():
                p.kill()
                p.wait()
                _mark(out / "rows" / f"{row_file(*k)}.json", "killed: still running after the time limit")
                print(f"row {row_file(*k)} killed after the deadline", flush=True)
            running.clear()
        time.sleep(0.2)
    meta["wall_s"] = time.time() - t_start
    res = aggregate(out, args.device_name, command, meta)
    print((out / f"quality-{res['device']}.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

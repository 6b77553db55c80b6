"""Data-parallel scaling on several GPUs: arbitor's integer all-reduce against PyTorch DDP (issue 15).

Usage (a host with N GPUs; NCCL)::

    PYTHONPATH=. python benchmarks/bench_multigpu.py --worlds 1,2 --out-dir benchmarks/results/distributed

The parent launches one ``torchrun --standalone --nproc-per-node W`` job per row (this file in ``--worker``
mode) and writes ``<out-dir>/<gpu>x<count>.json`` and ``.md``: one object with ``device``, ``command`` and
``rows``; a row has ``world_size``, ``update_rule`` (or ``dense_ddp``), ``tokens_per_s`` (all ranks),
``scaling_efficiency`` (tokens/s over world_size x the same row's 1-GPU tokens/s), ``peak_mib`` (the largest
rank's ``max_memory_allocated``), ``bytes_per_step`` (what one step all-reduces per rank: the ternary rules'
integer ballots in their wire dtypes; DDP's bf16 gradients) and, for ternary rows, ``bit_identical``.

What is measured (the ``3b`` preset, batch 8 x ctx 512 per GPU, bf16 activations, as the preset ships:
block checkpointing; random weights drawn on the GPU, random tokens already on the GPU):

* ternary rows -- world 1: the plain one-process step (online ballots, no wrapper), eager; world W > 1:
  ``TernaryDataParallel`` with one micro-batch per rank (step-boundary ballots, overlapped bucketed
  all-reduce), eager. The 1-GPU CUDA-graph step is reported beside it (``graph_tokens_per_s``), and a graph
  capture of the data-parallel step is attempted (``graph`` sub-row) -- NCCL collectives can be captured;
* ``dense_ddp`` -- the same architecture in dense bf16 with fused AdamW, ``torch.compile``d, no activation
  checkpointing (its faster form, ``bench_speed.py``); DDP (``gradient_as_bucket_view``) for W > 1;
* ``bit_identical`` -- before timing, 2 steps on micro-batches keyed by the global micro-batch index
  (``1000 * step + rank``); every rank's digest of every ternary module (``state_digest``) must equal those of
  one GPU running ``TernaryDataParallel(micro_batches=W)`` on the same micro-batches (``--grad-accum W``);
* ``--parts cli``: the trainer end to end on NCCL (``torchrun -m arbitor -- train --preset tiny``, 2 ranks,
  against ``--grad-accum 2`` on one GPU: every checkpoint tensor and every logged loss equal), and a killed
  rank (rank 1 SIGKILLed after the first checkpoint: rank 0 must stop with a one-line error within its
  ``--dist-timeout``, and the last checkpoint must load).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._device import device_tag  # noqa: E402
from benchmarks.bench_speed import RULES, _build  # noqa: E402

_MB = 2 ** 20
BATCH, CTX = 8, 512
ID_STEPS = 2


# ----------------------------------------------------------------------------------------- worker side
def _micro(step: int, g: int, device, batch: int = BATCH, ctx: int = CTX) -> torch.Tensor:
    """Global micro-batch ``g`` of step ``step``: the same tokens on whichever rank (or accumulation slot) runs it."""
    gen = torch.Generator(device=device).manual_seed(1000 * step + g)
    return torch.randint(0, 256, (batch, ctx + 1), device=device, generator=gen)


def _loss(model, idx: torch.Tensor) -> torch.Tensor:
    return model(idx[:, :-1], idx[:, 1:])[1]


def _state_hash(model) -> str:
    from arbitor.ternary.parallel import state_digest
    from arbitor.ternary.step import ternary_layers
    digests = torch.stack([state_digest(m).cpu() for m in ternary_layers(model)])
    return hashlib.sha256(digests.numpy().tobytes()).hexdigest()[:16]


def _gather_obj(obj):
    import torch.distributed as dist
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(step, batches, steps: int, warmup: int) -> dict:
    _sync()
    for i in range(warmup):
        step(batches[i % len(batches)])
    _sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    _sync()
    dt = time.perf_counter() - t
    b, c = batches[0].shape[0], batches[0].shape[1] - 1
    return {"step_ms": 1000 * dt / steps, "rank_tokens_per_s": b * c * steps / dt,
            "peak_mib": torch.cuda.max_memory_allocated() / _MB if torch.cuda.is_available() else None}


def _ternary_step_fn(model, tdp):
    from arbitor.ternary.step import ternary_step

    def step(idx):
        if tdp is None:
            loss = _loss(model, idx)
            loss.backward()
            ternary_step(model)
            return loss
        with tdp.micro_batch(0):
            loss = _loss(model, idx)
            loss.backward()
        tdp.step()
        return loss
    return step


def worker(args) -> int:
    import torch.distributed as dist

    from arbitor.model.config import preset
    from arbitor.ternary.parallel import TernaryDataParallel
    from arbitor.ternary.step import ternary_layers
    from arbitor.train.distributed import init_from_env
    cpu = args.preset != "3b" and not torch.cuda.is_available()     # the CPU smoke test of this file (gloo)
    device = torch.device(init_from_env("cpu" if cpu else "cuda", timeout_s=120.0) or "cuda")
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    if args.group1 and not dist.is_initialized():   # the data-parallel path with nobody to talk to: its overhead
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    shape = dict(batch=args.batch, ctx=args.ctx)
    res: dict = {"world_size": world, "bytes_per_step": 0}
    batches = [_micro(99, 17 * rank + i, device, **shape) for i in range(2)]

    if args.worker == "dense":
        from torch.nn.parallel import DistributedDataParallel as DDP
        torch.manual_seed(0)
        model = _build(preset(args.preset, linear="dense", activation_checkpointing=False), device,
                       torch.bfloat16 if device.type == "cuda" else torch.float32)
        params = [p for p in model.parameters() if p.requires_grad]
        wrapped = model
        if world > 1:       # DDP all-reduces every gradient in its dtype (bf16)
            res["bytes_per_step"] = sum(p.numel() * p.element_size() for p in params)
            wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
                          gradient_as_bucket_view=True)
        fwd = torch.compile(wrapped) if device.type == "cuda" else wrapped
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=device.type == "cuda")

        def step(idx):
            loss = _loss(fwd, idx)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss
        res.update(_timed(step, batches, args.steps, args.warmup + 2))
        res["mode"] = ("compile" if device.type == "cuda" else "eager") + (" + DDP" if world > 1 else "")
    else:
        cfg = preset(args.preset, ternary=RULES[args.worker])
        torch.manual_seed(0)
        model = _build(cfg, device)
        tdp = None
        if dist.is_initialized():
            # 1. bit-identity: ID_STEPS steps, one micro-batch per rank keyed by its global index, then every
            # rank's digest (the parent compares them with one GPU's --grad-accum W run: ``identity_only``)
            # a chunked loss (the 3b preset's) casts one ballot of the head per chunk: reserve those slots
            tdp = TernaryDataParallel(model, micro_batches=1, passes=cfg.ballots_per_pass(args.batch * args.ctx),
                                      broadcast=True)
            for s in range(ID_STEPS):
                with tdp.micro_batch(0):
                    _loss(model, _micro(s, rank, device, **shape)).backward()
                tdp.step()
            _sync()
            res["rank_hashes"] = _gather_obj(_state_hash(model))
            res["bytes_per_step"] = sum(t.numel() * torch.empty((), dtype=d).element_size()
                                        for m in ternary_layers(model) for t, d in m.reduce_tensors())
        # 2. timing: world 1 -> the plain online step (the fastest one-process form, nothing to all-reduce);
        # world W -> the data-parallel step, one micro-batch per rank, on the model above
        step = _ternary_step_fn(model, tdp)
        res.update(_timed(step, batches, args.steps, args.warmup))
        res["mode"] = "eager" + (", TernaryDataParallel" if tdp is not None else "") + (
            " (process group of 1)" if args.group1 else "")
        _write_partial(args, res, rank, world)
        if args.graph and device.type == "cuda":   # the whole step as one CUDA graph (the trainer's --cuda-graph)
            from arbitor.train.graph import GraphedStep
            try:
                graphed = GraphedStep(step)
                g = _timed(graphed, batches, args.steps, graphed.warmup + 2)
                res["graph_tokens_per_s"] = g["rank_tokens_per_s"] * world
                res["graph_step_ms"] = g["step_ms"]
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                res["graph_error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    _write_partial(args, res, rank, world)
    # no barrier / destroy_process_group: after a captured NCCL step the teardown can hang (seen on 2 x H200);
    # every rank has passed the all-gather in _write_partial, so leaving at once is safe
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _write_partial(args, res: dict, rank: int, world: int) -> None:
    peaks = _gather_obj(res.get("peak_mib"))
    if rank != 0:
        return
    out = dict(res)
    out["peak_mib"] = max(p for p in peaks if p is not None) if any(p is not None for p in peaks) else None
    if "rank_tokens_per_s" in out:
        out["tokens_per_s"] = out["rank_tokens_per_s"] * world
    Path(args.json).write_text(json.dumps(out, indent=1))


# ----------------------------------------------------------------------------------------- parent side
def _torchrun(world: int, worker_args: list[str], timeout: float, log) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           str(Path(__file__).resolve()), *worker_args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), NCCL_NVLS_ENABLE="0", PYTHONUNBUFFERED="1")
    if "--graph" in worker_args:    # blocking waits (the trainer's default, init_from_env) cannot be captured
        env.setdefault("TORCH_NCCL_BLOCKING_WAIT", "0")
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = 124, f"timed out after {timeout:.0f} s\n" + str(exc.stdout or "")[-2000:]
    log(f"  torchrun W={world} {' '.join(worker_args[:4])}: rc {rc} in {time.perf_counter() - t:.0f} s")
    if rc:
        jpath = worker_args[worker_args.index("--json") + 1]
        errs = sorted(Path(jpath).parent.glob(Path(jpath).name + ".err*"))
        tb = errs[0].read_text().strip().splitlines() if errs else text.strip().splitlines()
        log("    " + "\n    ".join(tb[-8:]))
    return rc, text


def part_scaling(args, out: Path, rows: list, log, save) -> None:
    worlds = [int(w) for w in args.worlds.split(",")]
    kinds = [k for k in args.rules.split(",") if k] + (["dense"] if args.dense else [])
    tmp = Path(args.work_dir)
    for kind in kinds:
        ref_hash: dict[int, str] = {}
        base = None
        for w in worlds:
            path = tmp / f"{kind}-w{w}.json"
            shape = ["--preset", args.preset, "--batch", str(args.batch), "--ctx", str(args.ctx)]
            wargs = ["--worker", kind, "--json", str(path), "--steps", str(args.steps), "--warmup", str(args.warmup),
                     "--accum", "1", *shape] + (["--graph"] if args.graph and kind != "dense" else [])
            rc, _ = _torchrun(w, wargs, args.row_timeout, log)
            if not path.exists():
                rows.append({"world_size": w, "update_rule": "dense_ddp" if kind == "dense" else kind,
                             "error": f"torchrun rc {rc}"})
                save()
                continue
            r = json.loads(path.read_text())
            row = {"world_size": w, "update_rule": "dense_ddp" if kind == "dense" else kind,
                   "tokens_per_s": r.get("tokens_per_s"), "step_ms": r.get("step_ms"), "peak_mib": r.get("peak_mib"),
                   "bytes_per_step": r["bytes_per_step"], "mode": r.get("mode")}
            for k in ("graph_tokens_per_s", "graph_step_ms", "graph_error"):
                if k in r:
                    row[k] = r[k]
            if w == 1:
                base = r.get("tokens_per_s")
            row["scaling_efficiency"] = (row["tokens_per_s"] / (w * base)) if base and row["tokens_per_s"] else None
            if kind != "dense":
                hashes = r.get("rank_hashes") or []
                if w > 1 and w not in ref_hash:   # the one-GPU --grad-accum W run on the same micro-batches
                    rpath = tmp / f"{kind}-ref{w}.json"
                    _torchrun(1, ["--worker", kind, "--json", str(rpath), "--steps", "1", "--warmup", "0",
                                  "--accum", str(w), "--identity-only", *shape], args.row_timeout, log)
                    if rpath.exists():
                        ref_hash[w] = json.loads(rpath.read_text())["rank_hashes"][0]
                row["bit_identical"] = None   # world 1 is the plain step: nothing to compare
                if w > 1:      # the reference (one GPU, grad_accum W) runs apart, above
                    ref = ref_hash.get(w)
                    row["rank_hashes"] = hashes
                    row["reference_hash"] = ref
                    row["bit_identical"] = bool(ref) and bool(hashes) and all(h == ref for h in hashes)
            rows.append(row)
            log(f"  -> {json.dumps({k: v for k, v in row.items() if k != 'rank_hashes'})}")
            save()
            if w == 1 and args.overhead and kind == kinds[0] and kind != "dense":
                gpath = tmp / f"{kind}-w1-group.json"
                _torchrun(1, [*wargs[:2], "--json", str(gpath), *wargs[4:], "--group1"], args.row_timeout, log)
                if gpath.exists():
                    g = json.loads(gpath.read_text())
                    rows.append({"world_size": 1, "update_rule": kind, "tokens_per_s": g["tokens_per_s"],
                                 "step_ms": g["step_ms"], "peak_mib": g["peak_mib"], "mode": g["mode"],
                                 "bytes_per_step": g["bytes_per_step"], "process_group_of_1": True,
                                 "scaling_efficiency": g["tokens_per_s"] / base if base else None})
                    log(f"  -> {json.dumps(rows[-1])}")
                    save()


def _load_state(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def part_cli(args, out: Path, rows: list, log, save) -> None:
    """The trainer on NCCL: 2 ranks vs one GPU with --grad-accum 2 (bit-identical), then a killed rank."""
    work = Path(args.work_dir) / "cli"
    work.mkdir(parents=True, exist_ok=True)
    common = ["train", "--preset", "tiny", "--steps", "30", "--batch", "8", "--ctx", "64", "--eval-interval", "10",
              "--device", "cuda", "--seed", "3"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), NCCL_NVLS_ENABLE="0")
    a, b = work / "two-ranks", work / "one-gpu-accum2"
    t = time.perf_counter()
    p1 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                         "arbitor", "--", *common, "--run", str(a)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
    p2 = subprocess.run([sys.executable, "-m", "arbitor", *common, "--grad-accum", "2", "--run", str(b)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
    row: dict = {"name": "cli_two_ranks_vs_grad_accum", "rc": [p1.returncode, p2.returncode],
                 "seconds": time.perf_counter() - t}
    if p1.returncode or p2.returncode:
        row["error"] = (p1.stderr + p2.stderr).strip().splitlines()[-6:]
    else:
        sa, sb = _load_state(a / "checkpoint.safetensors"), _load_state(b / "checkpoint.safetensors")
        diff = [k for k in sa if k not in sb or not torch.equal(sa[k], sb[k])]
        drop = ("tokens_per_s", "mem_mb", "modality_counts", "modality")     # timing: not part of the contract
        la, lb = ([{k: v for k, v in json.loads(x).items() if k not in drop}
                   for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b))
        row.update(tensors=len(sa), differing_tensors=diff[:5], records_equal=la == lb, records=len(la),
                   bit_identical=not diff and la == lb and len(la) > 0)
    rows.append(row)
    log(f"  -> {json.dumps(row)[:600]}")
    save()

    # a killed rank: ranks started by hand (no torchrun agent, which would tear the survivor down itself)
    run = work / "killed"
    port = 29_611
    procs = []
    for r in range(2):
        e = dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "arbitor", "train", "--preset", "small", "--steps",
                                       "100000", "--batch", "8", "--ctx", "64", "--eval-interval", "0",
                                       "--save-interval", "20", "--device", "cuda", "--dist-timeout", "20",
                                       "--run", str(run)], cwd=ROOT, env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    ck = run / "checkpoint.safetensors"
    t0 = time.perf_counter()
    while not ck.exists() and time.perf_counter() - t0 < 180 and all(p.poll() is None for p in procs):
        time.sleep(0.5)
    time.sleep(2.0)
    kill_t = time.perf_counter()
    procs[1].send_signal(signal.SIGKILL)
    try:
        _, err0 = procs[0].communicate(timeout=120)
        rc0 = procs[0].returncode
    except subprocess.TimeoutExpired:
        procs[0].kill()
        _, err0 = procs[0].communicate()
        rc0 = "hung (killed after 120 s)"
    stopped = time.perf_counter() - kill_t
    procs[1].communicate()
    err_lines = [x for x in err0.strip().splitlines() if x.strip()]
    load = subprocess.run([sys.executable, "-m", "arbitor", "sample", "--run", str(run), "--tokens", "16",
                           "--device", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    row = {"name": "killed_rank", "checkpoint_before_kill": ck.exists(), "survivor_rc": rc0,
           "survivor_stopped_after_s": round(stopped, 1), "survivor_last_stderr_lines": err_lines[-3:],
           "stderr_lines": len(err_lines), "checkpoint_loads": load.returncode == 0,
           "sample_stderr": load.stderr.strip().splitlines()[-2:]}
    rows.append(row)
    log(f"  -> {json.dumps(row)[:800]}")
    save()


def _render(res: dict) -> str:
    if "runs" in res:   # a file assembled from several runs: each row names its run
        cmds = [f"run {k}: `{v}`" for k, v in res["runs"].items()]
    else:
        cmds = [f"`{e['command']}`" for e in res.get("earlier", [])] + [f"`{res['command']}`"]
    lines = [f"# Data-parallel scaling ({res['device']})", "", "Commands: " + "; ".join(cmds), "",
             *([res["note"], ""] if res.get("note") else []),
             "3b preset, batch 8 x ctx 512 per GPU (bf16 activations, block checkpointing for arbitor; dense bf16 "
             "without). tokens/s over all GPUs; efficiency = tokens/s / (W x 1-GPU tokens/s of the same row).", "",
             "| world | rule | mode | tokens/s | efficiency | peak MiB/GPU | bytes all-reduced/step | bit-identical "
             "| 1-GPU graph / DP graph tokens/s |", "|---:|---|---|---:|---:|---:|---:|---|---|"]
    for r in res["rows"]:
        if "world_size" not in r:
            continue
        if "error" in r:
            lines.append(f"| {r['world_size']} | {r['update_rule']} | failed: {r['error']} | | | | | | |")
            continue
        eff = f"{r['scaling_efficiency']:.3f}" if r.get("scaling_efficiency") else ""
        g = (f"{r['graph_tokens_per_s']:,.0f}" if r.get("graph_tokens_per_s") else
             ("capture failed" if r.get("graph_error") else ""))
        bi = "" if r.get("bit_identical") is None else ("yes" if r["bit_identical"] else "**no**")
        peak = f"{r['peak_mib']:,.0f}" if r.get("peak_mib") is not None else ""
        lines.append(f"| {r['world_size']} | {r['update_rule']} | {r.get('mode', '')} | {r['tokens_per_s']:,.0f} "
                     f"| {eff} | {peak} | {r['bytes_per_step']:,} | {bi} | {g} |")
    other = [r for r in res["rows"] if "name" in r]
    if other:
        lines += ["", "Trainer on NCCL (`arbitor train`):", ""]
        lines += [f"- `{r['name']}`: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "name") for r in other]
    notes = sorted({r["graph_note"] for r in res["rows"] if r.get("graph_note")})
    if notes:
        lines += ["", "DP graph column: " + " ".join(notes)]
    errs = [r for r in res["rows"] if r.get("graph_error")]
    if errs:
        lines += ["", "Graph capture errors:", ""] + [f"- W={r['world_size']} {r['update_rule']}: {r['graph_error']}"
                                                      for r in errs]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", default="1,2", help="GPU counts, comma-separated")
    ap.add_argument("--rules", default="bigint,counter", help="ternary rows (empty: none)")
    ap.add_argument("--no-dense", dest="dense", action="store_false", help="skip the dense bf16 DDP rows")
    ap.add_argument("--parts", default="scaling,cli")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--graph", action="store_true", help="also try a CUDA graph of the ternary step")
    ap.add_argument("--overhead", action="store_true", help="ternary rows: add world 1 through TernaryDataParallel "
                    "with a process group of 1 (the wrapper's cost with nothing to overlap)")
    ap.add_argument("--row-timeout", type=float, default=300.0)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results" / "distributed"))
    ap.add_argument("--device-name", default=None)
    ap.add_argument("--work-dir", default=None, help="per-row JSON and run directories (default: a temp dir)")
    # worker mode (run by torchrun)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--accum", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--identity-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--group1", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="3b", help=argparse.SUPPRESS)   # tiny: the CPU smoke test (gloo)
    ap.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    ap.add_argument("--ctx", type=int, default=CTX, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        try:
            return identity_only(args) if args.identity_only else worker(args)
        except Exception:  # noqa: BLE001 - the parent reports it
            Path(f"{args.json}.err{os.environ.get('RANK', '0')}").write_text(traceback.format_exc())
            raise
    if not torch.cuda.is_available() and (args.preset == "3b" or "cli" in args.parts):
        print("bench_multigpu: needs CUDA GPUs (NCCL); the CPU contract tests are tests/train/test_distributed.py",
              file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="bench_multigpu_")
    gpus = torch.cuda.device_count()
    gpu = torch.cuda.get_device_name(0) if gpus else "cpu (gloo smoke test)"
    name = (args.device_name or (device_tag(gpu) if gpus else "cpu")) + f"x{gpus}"
    res = {"device": f"{gpus} x {gpu}", "torch": torch.__version__,
           "command": "PYTHONPATH=. python benchmarks/bench_multigpu.py " + " ".join(sys.argv[1:]), "rows": []}
    old = out / f"{name}.json"
    if old.exists():     # a second run (other rows) adds to the file: rows it measures again replace the old ones
        prev = json.loads(old.read_text())
        res["earlier"] = prev.get("earlier", []) + [{"command": prev["command"], "device": prev["device"]}]
        res["rows"] = prev["rows"]
    logf = open(out / f"{name}.log", "a")   # noqa: SIM115 - open for the whole run

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    def key(r: dict) -> tuple:
        return (r.get("name"), r.get("world_size"), r.get("update_rule"), r.get("process_group_of_1", False))

    def save() -> None:
        latest = {key(r): i for i, r in enumerate(res["rows"])}       # the last row of each key wins
        res["rows"][:] = [r for i, r in enumerate(res["rows"]) if latest[key(r)] == i]   # in place: parts hold it
        (out / f"{name}.json").write_text(json.dumps(res, indent=1))
        (out / f"{name}.md").write_text(_render(res))
    fns = {"scaling": part_scaling, "cli": part_cli}
    for part in args.parts.split(","):          # in the order given
        log(f"[{part}]")
        try:
            fns[part](args, out, res["rows"], log, save)
        except Exception:  # noqa: BLE001 - keep the rows measured so far
            log(traceback.format_exc())
    save()
    return 0


def identity_only(args) -> int:
    """One process, ``--accum W`` micro-batches per step on the same global micro-batches as W ranks: the
    reference hash of the bit-identity check."""
    from arbitor.model.config import preset
    from arbitor.ternary.parallel import TernaryDataParallel
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(0)
    cfg = preset(args.preset, ternary=RULES[args.worker])
    model = _build(cfg, device)
    tdp = TernaryDataParallel(model, micro_batches=args.accum, passes=cfg.ballots_per_pass(args.batch * args.ctx))
    for s in range(ID_STEPS):
        for j in range(args.accum):
            with tdp.micro_batch(j):
                _loss(model, _micro(s, j, device, batch=args.batch, ctx=args.ctx)).backward()
        tdp.step()
    Path(args.json).write_text(json.dumps({"rank_hashes": [_state_hash(model)]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

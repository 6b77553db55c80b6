"""Kill a training process at random moments; the last checkpoint must always load and resume bit-exactly.

Each trial starts ``arbitor train`` (tiny preset, a checkpoint after every step), waits until its first
checkpoint exists, sleeps a random 0..``--window`` seconds and sends SIGKILL. Then:

1. the run directory's checkpoint must load (``load_checkpoint``: digest, header checks) -- or be absent if
   the kill came before the first write finished;
2. ``arbitor train --resume`` (repeated if needed) must finish the run;
3. every tensor of the final checkpoint must equal the straight run's.

A kill is classed "during a checkpoint write" when the writer's temporary file was left behind, else
"between writes" (forward, backward, update, logging, evaluation). Writes ``<out-dir>/cpu.json|md``.

    PYTHONPATH=. python benchmarks/fault_injection.py --trials 100
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arbitor.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint  # noqa: E402

FLAGS = ["--steps", "12", "--batch", "2", "--ctx", "16", "--max-chars", "20000", "--save-interval", "1",
         "--eval-interval", "4", "--eval-batches", "1", "--no-progress"]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _train(cwd: Path, run: str, resume: bool) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "arbitor", "train", *FLAGS, "--run", run] + (["--resume"] if resume else [])
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def trial(cwd: Path, run: str, window: float, rng: random.Random, ref: dict, target: str = "any") -> dict:
    d = cwd / "runs" / run
    p = subprocess.Popen([sys.executable, "-m", "arbitor", "train", *FLAGS, "--run", run], cwd=cwd, env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (d / CHECKPOINT_NAME).exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.005)
    if target == "write":      # wait for a checkpoint write to be under way, then kill inside it
        t1 = time.time()
        while not list(d.glob(".*.tmp")) and p.poll() is None and time.time() - t1 < 60:
            pass
        time.sleep(rng.uniform(0.0, 0.002))
    else:
        time.sleep(rng.uniform(0.0, window))
    finished = p.poll() is not None
    p.send_signal(signal.SIGKILL)
    p.wait()
    phase = "finished before the kill" if finished else (
        "during a checkpoint write" if list(d.glob(".*.tmp")) else "between writes")
    out = {"phase": phase, "loaded": None, "resumes": 0, "bit_exact": None}
    if (d / CHECKPOINT_NAME).exists():
        try:
            out["step_at_kill"] = load_checkpoint(d / CHECKPOINT_NAME)[2]["step"]
            out["loaded"] = True
        except CheckpointError as exc:
            out["loaded"] = False
            out["error"] = str(exc)
            return out
    while True:
        has = (d / CHECKPOINT_NAME).exists()
        if has and load_checkpoint(d / CHECKPOINT_NAME)[2]["step"] >= 12:
            break
        proc = _train(cwd, run, resume=has)
        out["resumes"] += 1
        if proc.returncode != 0:
            out["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"
            return out
    final = load_checkpoint(d / CHECKPOINT_NAME)[0]
    out["bit_exact"] = all(torch.equal(final[k], ref[k]) for k in ref)
    out["stale_temps_left"] = len(list(d.glob(".*.tmp")))
    return out


def run_trials(n: int, window: float, seed: int, workdir: Path, target: str = "any") -> dict:
    rng = random.Random(seed)
    proc = _train(workdir, "straight", resume=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    ref = load_checkpoint(workdir / "runs" / "straight" / CHECKPOINT_NAME)[0]
    rows = [trial(workdir, f"k{i}", window, rng, ref, target) for i in range(n)]
    return {"trials": rows}


def summarize(rows: list[dict]) -> list[dict]:
    out = {}
    for r in rows:
        s = out.setdefault(r["phase"], {"phase": r["phase"], "kills": 0, "checkpoint_loaded": 0,
                                        "no_checkpoint_yet": 0, "resumed_bit_exact": 0, "failures": 0})
        s["kills"] += 1
        s["checkpoint_loaded"] += r["loaded"] is True
        s["no_checkpoint_yet"] += r["loaded"] is None
        s["resumed_bit_exact"] += r["bit_exact"] is True
        s["failures"] += bool(r.get("error")) or r["bit_exact"] is False or r["loaded"] is False
    return list(out.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--window", type=float, default=1.0, help="seconds after the first checkpoint to kill within")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", choices=("any", "write"), default="any",
                    help="any: a random moment; write: inside a checkpoint write (its temp file exists)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results" / "reliability"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run_trials(args.trials, args.window, args.seed, Path(tmp), args.target)
    res["summary"] = summarize(res["trials"])
    res["command"] = "PYTHONPATH=. python benchmarks/fault_injection.py " + " ".join(argv or sys.argv[1:])
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "cpu" if args.target == "any" else f"cpu-{args.target}"
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    lines = ["# Fault injection (SIGKILL during training, CPU)", "", f"Command: `{res['command']}`", "",
             "| killed | kills | checkpoint loaded | no checkpoint yet | resumed bit-exact | failures |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {s['phase']} | {s['kills']} | {s['checkpoint_loaded']} | {s['no_checkpoint_yet']} | "
              f"{s['resumed_bit_exact']} | {s['failures']} |" for s in res["summary"]]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if any(s["failures"] for s in res["summary"]) else 0


if __name__ == "__main__":
    sys.exit(main())

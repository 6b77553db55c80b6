"""Golden fingerprints: sha256 of every model buffer and the exact losses after short CPU runs.

Recorded before the package re-layout (issue 12) and kept as a regression test
(``tests/test_golden.py``): the same commands must give bit-identical buffers and losses.
A change that alters the numerics on purpose re-records them in the same commit and says why::

    python tests/golden/fingerprints.py --record

Each case runs ``python -m arbitor ...`` in a subprocess pinned to what makes CPU float math
repeatable across x86 machines: one thread, ATen's portable (non-SIMD-dispatched) kernels and
MKL's conditional numerical reproducibility mode. Every flag that picks the numerics is explicit,
so a later change of a default does not move the fingerprints.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("fingerprints.json")
TEXT = "arbitor/data/sample.txt"  # relative to ROOT (the subprocess runs there)

PINNED_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default",
              "MKL_CBWR": "COMPATIBLE", "ARB_TERNARY_BACKEND": "torch", "ARB_CHECK_FINITE": "1"}

_TEXT_COMMON = ["train", "--preset", "tiny", "--text-data", str(TEXT), "--steps", "16", "--batch", "8",
                "--ctx", "32", "--eval-interval", "8", "--eval-batches", "2", "--group-size", "4",
                "--strength", "16", "--embedding-update-rule", "bigint", "--seed", "3", "--device", "cpu",
                "--backend", "torch", "--no-progress"]

CASES: dict[str, list[str]] = {
    "text-bigint": _TEXT_COMMON + ["--update-rule", "bigint", "--schedule", "constant"],
    "text-counter": _TEXT_COMMON + ["--update-rule", "counter", "--counter-bits", "4", "--counter-rate", "0.5",
                                    "--schedule", "cosine", "--warmup-steps", "4", "--min-rate-ratio", "0.1"],
    "pretrain": ["pretrain", "--preset", "tiny", "--steps", "10", "--batch", "4", "--ctx", "16",
                 "--text-weight", "1", "--code-weight", "1", "--image-weight", "1", "--audio-weight", "1",
                 "--video-weight", "1", "--text-data", str(TEXT), "--code-data", str(TEXT),
                 "--eval-interval", "5", "--eval-batches", "1", "--log-interval", "1", "--codes", "16",
                 "--vq-update-rule", "bigint", "--update-rule", "bigint", "--group-size", "4", "--strength", "16",
                 "--seed", "3", "--device", "cpu",
                 "--backend", "torch", "--no-progress"],
}


def _loss_record(rec: dict) -> dict:
    """The numbers of one metrics.jsonl record that come from the model (no timings, no memory)."""
    return {k: v for k, v in rec.items() if k == "step" or k == "loss" or k.startswith(("loss/", "val"))}


def run_pinned(args: list[str], cwd: Path = ROOT) -> None:
    """``python -m arbitor ARGS`` in ``cwd`` under ``PINNED_ENV``; ``RuntimeError`` with its stderr if it fails."""
    proc = subprocess.run([sys.executable, "-m", "arbitor", *args], cwd=cwd, env=dict(os.environ, **PINNED_ENV),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"arbitor {' '.join(args[:1])}: exit {proc.returncode}\n{proc.stderr[-3000:]}")


def fingerprint(run_dir: Path) -> dict:
    """``{"buffers": {name: sha256 of dtype, shape and bytes}, "metrics": [loss records]}`` of a run directory."""
    import torch
    from safetensors.torch import load_file
    tensors = load_file(Path(run_dir) / "checkpoint.safetensors")
    buffers = {}
    for key in sorted(tensors):
        if not key.startswith("model."):
            continue
        t = tensors[key].contiguous()
        h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        buffers[key[len("model."):]] = h.hexdigest()
    metrics = [_loss_record(json.loads(line)) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    return {"buffers": buffers, "metrics": metrics}


def run_case(name: str) -> dict:
    """Run one case in a pinned subprocess; returns its ``fingerprint``."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / name
        run_pinned([*CASES[name], "--run", str(run_dir)])
        return fingerprint(run_dir)


def record() -> None:
    out = {"env": PINNED_ENV, "cases": {name: {"args": args, **run_case(name)} for name, args in CASES.items()}}
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/golden/fingerprints.py --record")
    record()

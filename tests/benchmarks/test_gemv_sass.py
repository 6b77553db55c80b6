"""``benchmarks/gemv_sass.py`` compiles the decode GEMV for sm_90 on the CPU and counts its K loop (in a
subprocess: the kernel tests import Triton under ``TRITON_INTERPRET=1``)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gemv_sass.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_counts_the_k_loop_of_the_launchers_tile():
    out = _run("--tile", "16,2048,4")
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r"(\d+) instructions in the K loop, ([\d.]+) a weight \(([\d.]+) on the integer pipe\)", out.stdout)
    assert m, out.stdout
    # 256 weights a thread a K step; one byte permute and one FMA a weight at least, and the whole loop (decode, x,
    # the group sums) well under 8 a weight -- 4.21 with the word decode of 2026-11-30, 4.46 with the one before
    per_weight, int_pipe = float(m.group(2)), float(m.group(3))
    assert 2.0 < per_weight < 8.0 and 1.0 < int_pipe < per_weight
    assert "PRMT:" in out.stdout and "FFMA:" in out.stdout


def test_a_bad_tile_is_one_line_and_exit_2():
    out = _run("--tile", "16,x,4")
    assert out.returncode == 2 and "--tile" in out.stderr and "Traceback" not in out.stderr


def test_the_tensor_core_kernels_plane_form_takes_fewer_instructions_a_weight():
    """``--kernel mma``: the plane-by-plane form (one group a K step, ``plane_signs16``) against the form that
    builds ``round(T * S)`` from floats (a 256-column K step over four groups)."""
    out = _run("--kernel", "mma", "--tile", "256,64,4", "--tile", "32,256,4")
    assert out.returncode == 0, out.stderr[-2000:]
    planes, floats = (float(v) for v in re.findall(r"([\d.]+) a weight", out.stdout))
    assert planes < 0.5 * floats, out.stdout


def test_the_ptx_tensor_core_kernel_takes_fewer_instructions_a_weight_than_the_gemv():
    """``--kernel tc`` (``decode_tc_kernel`` at one row, its launch tile): its sm_90 K loop has HMMAs and fewer
    instructions a weight than the CUDA-core GEMV's (1.84 against 4.21 on 2026-11-30)."""
    tc = _run("--kernel", "tc")
    gemv = _run("--tile", "16,2048,4")
    assert tc.returncode == 0 and gemv.returncode == 0, tc.stderr[-2000:] + gemv.stderr[-2000:]
    (t,), (g,) = (re.findall(r"([\d.]+) a weight", o.stdout) for o in (tc, gemv))
    assert "HMMA:" in tc.stdout and float(t) < 0.6 * float(g), (tc.stdout, gemv.stdout)

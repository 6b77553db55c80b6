"""The counter step kernel compiles for a Hopper GPU (sm_90) on a machine without one.

The interpreter tests (``test_counter_ops.py``) check what the kernel computes; they cannot see an error that
only Triton's GPU compiler raises (a constexpr branch, a reshape it will not lower). ``triton.compile`` with an
explicit ``GPUTarget`` runs the whole pipeline to a cubin (Triton ships ``ptxas``) without a device, so CI
compiles the kernel with the settings its launcher picks for each counter width. It runs in a subprocess
because the other kernel tests import the kernels under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from arbitor.ternary.ops.counter_triton import counter_step_kernel
sig = {'gw_ptr': '*bf16', 'scale_ptr': '*fp32', 't_ptr': '*u8', 'c_ptr': '*u8', 'corr_ptr': '*i64',
       'key_ptr': '*i64', 'step_ptr': '*i64', 'pending_ptr': '*i64', 'bad_ptr': '*i32', 'rows': 'i32', 'K': 'i32',
       'KB': 'i32', 'CB': 'i32', 'CB_LO': 'i32', 'G': 'i32', 'row0': 'i32', 'stride_g': 'i32',
       'BITS': 'constexpr', 'GS': 'constexpr', 'BLOCK_R': 'constexpr', 'BLOCK_K': 'constexpr'}
for bits in (1, 2, 4, 5, 8):
    for gs, dtype in ((8, '*fp32'), (128, '*bf16'), (256, '*fp16')):
        block_k = max(128, gs)                       # as counter_block_triton_ picks them
        block_r = max(1, 2048 // block_k)
        src = ASTSource(fn=counter_step_kernel, signature=dict(sig, gw_ptr=dtype),
                        constexprs={'BITS': bits, 'GS': gs, 'BLOCK_R': block_r, 'BLOCK_K': block_k})
        kernel = triton.compile(src, target=GPUTarget('cuda', 90, 32))
        assert kernel.asm['cubin'], (bits, gs)
print('compiled')
"""


def test_counter_step_kernel_compiles_for_sm90_at_every_counter_width():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("this triton build has no ptxas")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]

"""Kernels compile for a Hopper GPU (sm_90) on a machine without one: the counter step kernel, the M = 1 /
small-M decode kernels and the fp8 quantisers.

The interpreter tests (``test_counter_ops.py``, ``test_decode_ops.py``) check what a kernel computes; they cannot
see an error that only Triton's GPU compiler raises (a constexpr branch, a reshape it will not lower, an unrolled
loop over masked loads). ``triton.compile`` with an explicit ``GPUTarget`` runs the whole pipeline to a cubin
(Triton ships ``ptxas``) without a device, so CI compiles each kernel with the settings its launcher picks (and
the decode sweep's wide tiles). It runs in a subprocess because the other kernel tests import the kernels under
``TRITON_INTERPRET=1``.
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
from arbitor.ternary.ops.counter_triton import counter_step_kernel, step_tile
sig = {'gw_ptr': '*bf16', 'scale_ptr': '*fp32', 't_ptr': '*u8', 'c_ptr': '*u8', 'corr_ptr': '*i64',
       'key_ptr': '*i64', 'step_ptr': '*i64', 'pending_ptr': '*i64', 'bad_ptr': '*i32', 'rows': 'i32', 'K': 'i32',
       'KB': 'i32', 'CB': 'i32', 'CB_LO': 'i32', 'G': 'i32', 'row0': 'i32', 'stride_g': 'i32', 'one': 'i32',
       'BITS': 'constexpr', 'GS': 'constexpr', 'BLOCK_R': 'constexpr', 'NGT': 'constexpr', 'OPG': 'constexpr',
       'ALIGN8': 'constexpr'}
for bits in (1, 2, 4, 5, 8):
    for gs, dtype, align8 in ((4, '*fp32', False), (8, '*fp32', True), (128, '*bf16', True), (256, '*fp16', False)):
        block_r, ngt, opg, warps = step_tile(gs)          # as counter_block_triton_ picks them
        src = ASTSource(fn=counter_step_kernel, signature=dict(sig, gw_ptr=dtype),
                        constexprs={'BITS': bits, 'GS': gs, 'BLOCK_R': block_r, 'NGT': ngt, 'OPG': opg,
                                    'ALIGN8': align8})
        kernel = triton.compile(src, target=GPUTarget('cuda', 90, 32), options={'num_warps': warps})
        assert kernel.asm['cubin'], (bits, gs)
print('compiled')
"""

DECODE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from arbitor.ternary.ops.decode_triton import (_GEMV_TILE, _MMA_TILE, decode_gemv_expand_kernel, decode_gemv_kernel,
                                              decode_mma_kernel)
from arbitor.ternary.ops.linear_triton import ternary_gemv_m1_kernel
common = {'x_ptr': '*bf16', 's_ptr': '*fp32', 'y_ptr': '*bf16', 'ws_ptr': '*fp32', 'cnt_ptr': '*i32', 'N': 'i32',
          'K': 'i32', 'G': 'i32', 'SPLIT': 'i32', 'GS': 'constexpr', 'BLOCK_N': 'constexpr', 'BLOCK_K': 'constexpr',
          'INTERP': 'constexpr'}
gemv = dict(common, w_ptr='*i32', KW='i32', stride_xk='i32', Q_PER_SPLIT='i32', F_HI='i32')
mma = dict(common, t_ptr='*u8', M='i32', KB='i32', stride_xm='i32', stride_xk='i32', K_PER_SPLIT='i32',
           DOT_PRECISION='constexpr', BLOCK_M='constexpr')
train = {k: v for k, v in gemv.items() if k != 's_ptr'}
train.update({'e_ptr': '*i8', 'corr_ptr': '*i64', 'step_ptr': '*i64', 'pending_ptr': '*i64', 'M': 'i32',
              'stride_xm': 'i32', 'stride_ym': 'i32', 'stride_yn': 'i32', 'strength': 'fp32'})
target = GPUTarget('cuda', 90, 32)
tiles = dict.fromkeys([tuple(_GEMV_TILE[:3]), (16, 2048, 4), (128, 512, 8)])   # the launcher's, the sweep's extremes
for bn, bk, warps in tiles:
    for fn, sig in ((decode_gemv_kernel, gemv), (ternary_gemv_m1_kernel, train)):
        src = ASTSource(fn=fn, signature=sig, constexprs={'GS': 64, 'BLOCK_N': bn, 'BLOCK_K': bk, 'INTERP': False})
        assert triton.compile(src, target=target, options={'num_warps': warps}).asm['cubin'], (fn, bn, bk)
expand = {k: v for k, v in mma.items() if k not in ('M', 'stride_xm', 'DOT_PRECISION', 'BLOCK_M', 'INTERP')}
for bn, bk, warps in tiles:
    src = ASTSource(fn=decode_gemv_expand_kernel, signature=expand, constexprs={'GS': 64, 'BLOCK_N': bn, 'BLOCK_K': bk})
    assert triton.compile(src, target=target, options={'num_warps': warps}).asm['cubin'], (bn, bk)
from arbitor.ternary.ops.decode_triton import _PLANES_TILE
mma.update(PLANES='constexpr', T_HI='constexpr', T_LO='constexpr')
for (bn, bk, warps), planes in ((_MMA_TILE[:3], False), (_PLANES_TILE[:3], True)):
    src = ASTSource(fn=decode_mma_kernel, signature=mma,
                    constexprs={'GS': 64, 'BLOCK_N': bn, 'BLOCK_K': bk, 'BLOCK_M': 16, 'DOT_PRECISION': 'tf32',
                                'INTERP': False, 'PLANES': planes, 'T_HI': 0x00BF3F00, 'T_LO': 0x00808000})
    k = triton.compile(src, target=target, options={'num_warps': warps})
    assert k.asm['cubin']
    assert planes == ('0x110000' in k.asm['ptx']), planes      # plane_signs16's selectors (mad.hi by 17 << 16)
print('compiled')
"""

PDL_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from arbitor.ternary.ops.decode_tc import (TC_TILE_ONE_WAVE, TC_TILED_ONE_WAVE, TC_TILES, TC_TILES_TILED, _constraints,
                                           decode_tc_kernel)
from arbitor.model.decode_attention import _split_kernel
target = GPUTarget('cuda', 90, 32)
def ptx(fn, sig, consts, warps):
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                       options={'num_warps': warps, 'launch_pdl': True})
    assert k.asm['cubin'], fn
    return k.asm['ptx']
tc = {'x_ptr': '*bf16', 'w_ptr': '*i32', 's_ptr': '*fp32', 'y_ptr': '*bf16', 'ws_ptr': '*fp32', 'cnt_ptr': '*i32',
      'tbl_ptr': '*i32', 'M': 'i32', 'N': 'i32', 'KW': 'i32', 'G': 'i32', 'stride_xm': 'i32', 'SPLIT': 'i32',
      'Q_PER_SPLIT': 'i32'}
for tokens, t in ((1, TC_TILES[1]), (1, TC_TILE_ONE_WAVE[1]), (16, TC_TILES[16]), (1, TC_TILES_TILED[1]),
                  (1, TC_TILED_ONE_WAVE[2]), (8, TC_TILES_TILED[8])):
    consts = {'GS': 64, 'R': t.R, 'TOKENS': tokens, 'NUM_WARPS': t.num_warps, 'WARP_SPLIT': t.WARP_SPLIT,
              'GROUP_COLUMNS': t.GROUP_COLUMNS, 'ASM': t.asm(64, tokens, False),
              'CONSTRAINTS': _constraints(t.R, tokens), 'RELU_SQUARE': False, 'INTERP': False, 'PDL': True,
              'TILED': t.TILED, 'EARLY_TRIGGER': t.EARLY_TRIGGER}
    code = ptx(decode_tc_kernel, dict(tc, **{k: 'constexpr' for k in consts}), consts, t.num_warps)
    # the wait before the first load; the trigger once, after the K loop's last mma, before the stores, or with
    # EARLY_TRIGGER right after the wait
    wait = code.index('griddepcontrol.wait')
    assert wait < code.index('ld.global'), t
    trigger = code.index('griddepcontrol.launch_dependents')
    assert code.count('griddepcontrol.launch_dependents') == 1, t
    if t.EARLY_TRIGGER:
        assert wait < trigger < code.index('ld.global'), t
    else:
        assert code.rindex('mma.sync') < trigger < code.index('st.global'), t
    assert 'ld.global.nc' not in code, t
att = {n: '*bf16' for n in ('q_ptr', 'k_ptr', 'v_ptr', 'mask_ptr', 'kn_ptr', 'vn_ptr', 'out_ptr')}
att.update({'pos_ptr': '*i64', 'acc_ptr': '*fp32', 'ml_ptr': '*fp32', 'cnt_ptr': '*i32', 'qk_scale': 'fp32'})
att.update({n: 'i32' for n in ('H', 'L', 'n_splits', 'BH', 's_qb', 's_qh', 's_kb', 's_kh', 's_kl', 's_vb', 's_vh',
                               's_vl', 's_m', 's_knb', 's_knh', 's_vnb', 's_vnh', 's_ob', 's_oh')})
for append, early in ((False, False), (True, False), (True, True)):
    consts = {'HD': 128, 'BLOCK_L': 128, 'SPLIT_TILES': 1, 'SPLIT_BLOCK': 8, 'APPEND': append, 'PDL': True,
              'EARLY': early}
    sig = dict(att, mask_ptr='*bf16' if append else '*u8', **{k: 'constexpr' for k in consts})
    code = ptx(_split_kernel, sig, consts, 4)
    wait = code.index('griddepcontrol.wait')
    if early:   # the position and the first tile before the wait, q and the new row after it
        assert code.index('ld.global') < wait < code.rindex('ld.global'), append
    else:
        assert wait < code.index('ld.global'), append
    assert 'griddepcontrol.launch_dependents' in code and 'ld.global.nc' not in code, append
print('compiled')
"""


FP8_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from arbitor.ternary.ops import fp8_triton as F
target = GPUTarget('cuda', 90, 32)
def build(fn, sig, consts, warps=4):
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target, options={'num_warps': warps})
    assert k.asm['cubin'], fn
    return k
(am, ac), (cm, cc) = F.AMAX_TILE, F.CAST_TILE
for act in ('*bf16', '*fp32'):
    build(F.amax_kernel, {'t_ptr': act, 'part_ptr': '*i32', 'bad_ptr': '*i32', 'M': 'i32', 'C': 'i32',
                          'stride_m': 'i32', 'ROWS': 'i32', 'BLOCK_M': 'constexpr', 'BLOCK_C': 'constexpr'},
          {'BLOCK_M': am, 'BLOCK_C': ac})
    build(F.cast_t_kernel, {'t_ptr': act, 'part_ptr': '*i32', 'q_ptr': '*u8', 'scale_ptr': '*fp32', 'M': 'i32',
                            'MP': 'i32', 'C': 'i32', 'P': 'i32', 'stride_m': 'i32', 'BLOCK_M': 'constexpr',
                            'BLOCK_C': 'constexpr', 'BLOCK_P': 'constexpr', 'INTERP': 'constexpr'},
          {'BLOCK_M': cm, 'BLOCK_C': cc, 'BLOCK_P': F.AMAX_PARTIALS, 'INTERP': False})
    for C in (768, 3072, 12288):                       # one read; two reads on 2 and on 4 warps
        block, one, warps = F._rows_launch(C)
        k = build(F.rows_kernel, {'t_ptr': act, 'q_ptr': '*u8', 'scale_ptr': '*fp32', 'C': 'i32', 'stride_m': 'i32',
                                  'BLOCK': 'constexpr', 'ONE_READ': 'constexpr', 'INTERP': 'constexpr'},
                  {'BLOCK': block, 'ONE_READ': one, 'INTERP': False}, warps)
        assert 'cvt.rn.satfinite.e4m3x2.f32' in k.asm['ptx']          # the hardware conversion, not the integer one
slots = lambda names, t: {f'{n}{i}': t for n in names for i in range(4)}
sig = dict(slots(['e'], '*i8'), **slots(['c', 'st', 'pd'], '*i64'), **slots(['sb'], 'i64'),
           **slots(['nm', 'og'], 'i32'), s_ptr='*fp32', part_ptr='*fp64', P_STRIDE='i32', GS='constexpr',
           BLOCK='constexpr', INTERP='constexpr')
for gs in (64, 256):
    build(F.scale_max_kernel, sig, {'GS': gs, 'BLOCK': F.SCALE_BLOCK, 'INTERP': False})
sig = dict(slots(['t'], '*u8'), **{f'n_{i}': 'i32' for i in range(4)}, **{f'o_{i}': 'i32' for i in range(4)},
           s_ptr='*fp32', part_ptr='*fp64', w_ptr='*u8', scale_ptr='*fp32', K='i32', G='i32', KB='i32', P='i32',
           W_LD='i32', GS='constexpr', BLOCK_N='constexpr', BLOCK_K='constexpr', BLOCK_P='constexpr',
           TRANSPOSE='constexpr', INTERP='constexpr')
for transpose, (bn, bk) in ((False, F.EXPAND_TILE), (True, F.EXPAND_TILE_T)):
    for gs in (64, 256):
        build(F.expand_fp8_kernel, sig, {'GS': gs, 'BLOCK_N': bn, 'BLOCK_K': max(bk, gs), 'BLOCK_P': 1024,
                                         'TRANSPOSE': transpose, 'INTERP': False})
print('compiled')
"""


def _compile(script: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("this triton build has no ptxas")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


def test_counter_step_kernel_compiles_for_sm90_at_every_counter_width():
    _compile(SCRIPT)


def test_decode_kernels_compile_for_sm90():
    """The M = 1 GEMVs (frozen and trained layers, and the frozen GEMV's plain form) at the launcher's tile and the
    sweep's extremes (a narrow, wide tile and the widest 128 x 512), with ``split_epilogue``'s unrolled reads; the
    tensor-core decode kernel."""
    _compile(DECODE_SCRIPT)


def test_dependent_launch_kernels_compile_for_sm90_and_wait_before_they_read():
    """``decode_tc_kernel`` (one-row tiles, the one-wave ring tile, 16 rows; in the ``tc`` layout the one-row, the
    one-wave 8-warp and the 8-row tiles) and the decode attention (with and without
    the cache append) as programmatic dependents: in each one's PTX ``griddepcontrol.wait`` comes before the first
    global load, the trigger for the next kernel after the K loop (``decode_tc``: after its last ``mma``, before its
    stores; in the ``tc`` layout's one-row tiles, ``EARLY_TRIGGER``, right after the wait, and only there), and
    neither reads anything through the non-coherent path. The attention's append into a settled cache
    (``EARLY``) reads before the wait (its position and first tile) and after it (q and the new row)."""
    _compile(PDL_SCRIPT)


def test_fp8_quantisers_compile_for_sm90():
    """The ``grad_W`` quantiser (its partial maxima walk a slice of rows in a loop), the row quantiser at each of its
    launch forms (with the hardware e4m3 conversion in the PTX), and a stack's scale maxima and expansion."""
    _compile(FP8_SCRIPT)

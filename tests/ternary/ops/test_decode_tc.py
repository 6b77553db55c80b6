"""``decode_tc``: the tensor-core decode GEMV of frozen layers.

* Its inline PTX (``tc_gemv_asm``) runs for one whole warp in a small interpreter of the instructions it uses
  (``mma.sync.m16n8k16`` included, from the PTX ISA's fragment layouts), fed the operands the kernel passes:
  every output of the warp equals ``x @ (T * S).T``. This is the GPU-only code path checked on the CPU.
* Under ``TRITON_INTERPRET`` the kernel (its plain-load form) matches the reference at odd shapes, every
  token count, group size and K split.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from ptxsim import prmt  # noqa: E402  (tests/ is on sys.path: conftest.py)

from arbitor.ternary.format import pack_ternary  # noqa: E402
from arbitor.ternary.ops.decode_tc import TABLE, tc_gemv_asm  # noqa: E402

M32 = 0xFFFFFFFF


def _f32(bits: int) -> float:
    return float(np.array([bits & M32], dtype=np.uint32).view(np.float32)[0])


def _bits(v: float) -> int:
    return int(np.array([v], dtype=np.float32).view(np.uint32)[0])


def _h16(bits: int, f16: bool) -> float:
    """A 16-bit float's value from its bits (bf16 or fp16)."""
    bits &= 0xFFFF
    if f16:
        return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])
    return _f32(bits << 16)


class Memory:
    """Byte buffers at fake addresses (``ld.global`` reads little-endian words)."""

    def __init__(self):
        self.bufs: list[tuple[int, bytes]] = []
        self.next = 1 << 20

    def add(self, data: bytes) -> int:
        base = self.next
        self.bufs.append((base, data))
        self.next += (len(data) + 4096) & ~1023
        return base

    def word(self, addr: int) -> int:
        for base, data in self.bufs:
            if base <= addr < base + len(data):
                assert addr % 4 == 0 and addr + 4 <= base + len(data), f"bad load at {addr - base}"
                return int.from_bytes(data[addr - base:addr - base + 4], "little")
        raise AssertionError(f"load outside every buffer: {addr:#x}")


def run_warp(asm: str, operands: list[dict[int, int]], mem: Memory, f16: bool) -> list[dict[int, int]]:
    """Run ``asm`` for the 32 lanes of a warp in lockstep; ``operands[l]``: ``$n`` -> 32/64-bit value of lane
    ``l``. Returns each lane's operands after the block (the outputs among them)."""
    lines = [s.strip() for s in asm.replace("{\n", "\n").split("\n")]
    body = [s for s in lines if s and not s.startswith(".reg") and s not in ("{", "}")]
    labels = {s[:-1]: i for i, s in enumerate(body) if s.endswith(":")}
    regs = [{f"${k}": v for k, v in ops.items()} for ops in operands]

    def val(lane: int, tok: str) -> int:
        tok = tok.strip()
        if tok in regs[lane]:
            return regs[lane][tok]
        if tok.startswith("0f"):
            return int(tok[2:], 16)
        return int(tok, 0)

    pc, steps = 0, 0
    while pc < len(body):
        steps += 1
        assert steps < 200000, "runaway loop"
        ins = body[pc]
        pc += 1
        if ins.endswith(":"):
            continue
        ins = ins.rstrip(";")
        pred = None
        if ins.startswith("@"):
            pred, ins = ins.split(None, 1)
        op, args = ins.split(None, 1)
        if op == "bra":
            target = args.strip()
            if pred is None or all(regs[lane][pred[1:]] for lane in range(32)):
                pc = labels[target]
            else:
                assert not any(regs[lane][pred[1:]] for lane in range(32)), "divergent branch"
            continue
        if op.startswith("mma.sync"):
            # {d0..d3}, {a0..a3}, {b0, b1}, {c0..c3}: fragments of the PTX ISA's m16n8k16 (16-bit inputs)
            groups = [[t.strip() for t in grp.split(",")] for grp in re.findall(r"\{([^}]*)\}", args)]
            dn, an, bn, cn = groups
            A = np.zeros((16, 16))
            B = np.zeros((16, 8))
            C = np.zeros((16, 8))
            for lane in range(32):
                g, tq = lane // 4, lane % 4
                a = [val(lane, t) for t in an]
                b = [val(lane, t) for t in bn]
                c = [_f32(val(lane, t)) for t in cn]
                for h in range(2):
                    A[g, 2 * tq + h] = _h16(a[0] >> (16 * h), f16)
                    A[g + 8, 2 * tq + h] = _h16(a[1] >> (16 * h), f16)
                    A[g, 2 * tq + 8 + h] = _h16(a[2] >> (16 * h), f16)
                    A[g + 8, 2 * tq + 8 + h] = _h16(a[3] >> (16 * h), f16)
                    B[2 * tq + h, g] = _h16(b[0] >> (16 * h), f16)
                    B[2 * tq + 8 + h, g] = _h16(b[1] >> (16 * h), f16)
                    C[g, 2 * tq + h] = c[h]
                    C[g + 8, 2 * tq + h] = c[2 + h]
            D = A @ B + C
            for lane in range(32):
                g, tq = lane // 4, lane % 4
                out = [D[g, 2 * tq], D[g, 2 * tq + 1], D[g + 8, 2 * tq], D[g + 8, 2 * tq + 1]]
                for name, v in zip(dn, out):
                    regs[lane][name] = _bits(v)
            continue
        for lane in range(32):
            if pred is not None and not regs[lane][pred[1:]]:
                continue
            r = regs[lane]
            if op.startswith("ld.global"):
                m = re.match(r"(\{[^}]*\}|\S+),\s*\[([^\]+]+)(?:\+(\d+))?\]", args)
                dst, base, off = m.group(1), m.group(2), int(m.group(3) or 0)
                names = [t.strip() for t in dst.strip("{}").split(",")]
                addr = val(lane, base) + off
                for k, name in enumerate(names):
                    r[name] = mem.word(addr + 4 * k)
                continue
            d, *src = [t.strip() for t in args.split(",")]
            a = [val(lane, t) for t in src]
            if op in ("mov.b32", "mov.f32", "mov.b64"):
                v = a[0]
            elif op == "shl.b32":
                v = a[0] << a[1]
            elif op == "shr.u32":
                v = (a[0] & M32) >> a[1]
            elif op == "and.b32":
                v = a[0] & a[1]
            elif op == "prmt.b32":
                v = prmt(a[0], a[1], a[2])
            elif op == "add.s64":
                v = a[0] + a[1]
            elif op == "sub.s32":
                v = a[0] - a[1]
            elif op == "setp.lt.s32":
                v = int(np.int32(np.uint32(a[0] & M32)) < a[1])
            elif op == "setp.gt.s32":
                v = int(np.int32(np.uint32(a[0] & M32)) > a[1])
            elif op == "fma.rn.f32":
                v = _bits(np.float32(np.float32(_f32(a[0])) * np.float32(_f32(a[1])) + np.float32(_f32(a[2]))))
            else:
                raise AssertionError(f"instruction {op} not modelled")
            r[d] = v if op in ("add.s64", "mov.b64") or op.startswith("setp") else v & M32
    return [{int(k[1:]): v for k, v in r.items() if re.fullmatch(r"\$\d+", k)} for r in regs]


def _warp_outputs(M, N, K, gs, R, tokens, f16, seed=0, x_ahead=True, ahead=1):
    """One warp (program 0, warp 0, the whole K) through the PTX: ``(y [M, N] from the warp's accumulators,
    mask of the outputs it owns, reference)``."""
    g_ = torch.Generator().manual_seed(seed)
    t = torch.randint(-1, 2, (N, K), generator=g_).to(torch.int8)
    t[0, :16] = torch.tensor([1, -1, 0, 1] * 4)
    S = torch.rand(N, K // gs, generator=g_) + 0.5
    dtype = torch.float16 if f16 else torch.bfloat16
    x = torch.randn(M, K, generator=g_).to(dtype)
    packed = pack_ternary(t)
    mem = Memory()
    wbase = mem.add(packed.numpy().tobytes())
    sbase = mem.add(S.numpy().tobytes())
    xbase = mem.add(x.view(torch.int16).numpy().tobytes())
    tbase = mem.add(np.array([TABLE], dtype=np.int32).tobytes())
    KW, G = K // 16, K // gs
    na = {1: 2, 8: 4, 16: 8}[tokens]
    asm = tc_gemv_asm(R, gs, tokens, f16, x_ahead, ahead)
    operands = []
    for lane in range(32):
        g, tq = lane // 4, lane % 4
        ops = {}
        k = na * R
        for r in range(R):
            for h in range(2):
                row = min(16 * r + g + 8 * h, N - 1)
                ops[k] = wbase + 4 * (row * KW + tq)
                k += 1
        for r in range(R):
            for h in range(2):
                row = min(16 * r + g + 8 * h, N - 1)
                ops[k] = sbase + 4 * (row * G)
                k += 1
        ops[k] = xbase + 2 * (min(g, M - 1) * K + 16 * tq)
        ops[k + 1] = xbase + 2 * (min(g + 8, M - 1) * K + 16 * tq)
        ops[k + 2] = K // 256
        ops[k + 3] = tbase
        operands.append(ops)
    outs = run_warp(asm, operands, mem, f16)
    y = torch.zeros(M, N, dtype=torch.float64)
    owned = torch.zeros(M, N, dtype=torch.bool)
    for lane in range(32):
        g, tq = lane // 4, lane % 4
        for r in range(R):
            for a in range(na):
                i = 2 * a if tokens == 1 else a
                m, n = 2 * tq + i % 2 + 8 * (i // 4), 16 * r + g + 8 * ((i % 4) // 2)
                if m < M and n < N:
                    y[m, n] = 0.5 * _f32(outs[lane][na * r + a])
                    owned[m, n] = True
    ref = x.double() @ (t.double() * S.double().repeat_interleave(gs, 1)).T
    return y, owned, ref


@pytest.mark.parametrize("M,tokens", [(1, 1), (5, 8), (8, 8), (11, 16), (16, 16)])
@pytest.mark.parametrize("gs,K,x_ahead,ahead", [(64, 512, True, 1), (256, 768, True, 1), (64, 768, False, 1),
                                                (128, 1280, False, 2), (64, 256, False, 3), (64, 1024, False, 3)])
def test_ptx_warp_matches_reference(M, tokens, gs, K, x_ahead, ahead):
    """Every output the warp owns (2 blocks of 16 features, 37 features: the last block's rows past N clamped),
    from the PTX run lane by lane, equals ``x @ (T * S).T`` to fp32 accumulation error -- with 2 and 3 chunks
    (the software-pipelined loop leaves from any of its unrolled copies), x loaded a chunk ahead or not, 1-3 chunks of
    weights in flight."""
    y, owned, ref = _warp_outputs(M, 37 if M > 1 else 29, K, gs, 2, tokens, f16=False, x_ahead=x_ahead, ahead=ahead)
    want = torch.zeros_like(owned)
    want[:M, :min(32, ref.shape[1])] = True
    assert torch.equal(owned, want)
    err = (y - ref)[owned].abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item(), err


def test_ptx_warp_fp16_and_group_128():
    y, owned, ref = _warp_outputs(3, 16, 512, 128, 1, 8, f16=True, seed=3)
    assert owned[:3, :16].all()
    assert (y - ref)[owned].abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_ptx_bad_arguments():
    with pytest.raises(ValueError, match="group_size"):
        tc_gemv_asm(1, 32, 1, False)
    with pytest.raises(ValueError, match="tokens"):
        tc_gemv_asm(1, 64, 4, False)
    with pytest.raises(ValueError, match="ahead"):
        tc_gemv_asm(1, 64, 1, False, True, 2)

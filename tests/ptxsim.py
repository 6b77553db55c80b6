"""A small interpreter of the inline PTX in the Triton kernels, for the CPU tests that check it
(``tests/ternary/ops/test_plane_asm.py``: ``plane_signs16``, one lane; ``test_decode_tc.py``: the whole K loop of
``decode_tc_kernel``, a warp in lockstep, ``mma.sync.m16n8k16`` from the PTX ISA's fragment layouts).

Only the instructions those blocks use are modelled; any other stops the test. Registers hold 32-bit patterns
(64-bit for addresses); float registers hold float32 bits. ``cp.async`` copies into the block's ``.shared`` array
land only when a ``cp.async.wait_group`` lets their group complete; an ``ld.shared`` of bytes whose copy has not
landed, or that nothing wrote, stops the test (so a missing or too-loose wait fails it).
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

M32 = 0xFFFFFFFF


def prmt(a: int, b: int, sel: int) -> int:
    """``prmt.b32 d, a, b, sel`` (default mode): output byte ``i`` = byte ``sel``'s nibble ``i`` of ``b:a``."""
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = 0
    for i in range(4):
        nib = (sel >> (4 * i)) & 0xF
        assert nib < 8, "sign-replicate mode is never used"
        out |= src[nib] << (8 * i)
    return out


def f32(bits: int) -> float:
    """The float32 value of 32 bits."""
    return float(np.array([bits & M32], dtype=np.uint32).view(np.float32)[0])


def bits32(v: float) -> int:
    """The bits of ``v`` rounded to float32."""
    return int(np.array([v], dtype=np.float32).view(np.uint32)[0])


def h16(bits: int, f16: bool) -> float:
    """A 16-bit float's value from its low 16 bits (bf16, or fp16 with ``f16``)."""
    bits &= 0xFFFF
    if f16:
        return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])
    return f32(bits << 16)


class Memory:
    """Byte buffers at made-up addresses (``ld.global`` reads little-endian words)."""

    def __init__(self) -> None:
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


def _s32(v: int) -> int:
    return int(np.int32(np.uint32(v & M32)))


#: the ALU instructions: operand values -> result (kept to 32 bits unless the name is in WIDE)
ALU = {
    "mov.b32": lambda a: a[0], "mov.f32": lambda a: a[0], "mov.b64": lambda a: a[0], "mov.u32": lambda a: a[0],
    "shl.b32": lambda a: a[0] << a[1], "shr.u32": lambda a: (a[0] & M32) >> a[1], "shr.b32": lambda a: a[0] >> a[1],
    "and.b32": lambda a: a[0] & a[1], "prmt.b32": lambda a: prmt(a[0], a[1], a[2]),
    "mad.lo.u32": lambda a: a[0] * a[1] + a[2], "mad.hi.u32": lambda a: ((a[0] * a[1]) >> 32) + a[2],
    "add.s64": lambda a: a[0] + a[1], "sub.s32": lambda a: a[0] - a[1],
    "setp.lt.s32": lambda a: int(_s32(a[0]) < a[1]), "setp.gt.s32": lambda a: int(_s32(a[0]) > a[1]),
    "setp.ne.s32": lambda a: int(_s32(a[0]) != a[1]), "and.pred": lambda a: int(bool(a[0]) and bool(a[1])),
    "add.f32": lambda a: bits32(np.float32(f32(a[0])) + np.float32(f32(a[1]))),
    "fma.rn.f32": lambda a: bits32(np.float32(np.float32(f32(a[0])) * np.float32(f32(a[1])) + np.float32(f32(a[2])))),
}
WIDE = ("mov.b64", "add.s64", "setp.lt.s32", "setp.gt.s32", "setp.ne.s32", "and.pred")


def _mma(regs: list[dict], args: str, val, f16: bool) -> None:
    """``mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}...``: ``{d0..d3}, {a0..a3}, {b0, b1}, {c0..c3}`` over the
    32 lanes (lane ``l``: ``g = l // 4``, ``tq = l % 4``), the products summed exactly and rounded to float32."""
    assert len(regs) == 32, "mma.sync needs a whole warp"
    dn, an, bn, cn = ([t.strip() for t in grp.split(",")] for grp in re.findall(r"\{([^}]*)\}", args))
    A, B, C = np.zeros((16, 16)), np.zeros((16, 8)), np.zeros((16, 8))
    for lane in range(32):
        g, tq = lane // 4, lane % 4
        a, b = [val(lane, t) for t in an], [val(lane, t) for t in bn]
        c = [f32(val(lane, t)) for t in cn]
        for h in range(2):
            A[g, 2 * tq + h], A[g + 8, 2 * tq + h] = h16(a[0] >> (16 * h), f16), h16(a[1] >> (16 * h), f16)
            A[g, 2 * tq + 8 + h], A[g + 8, 2 * tq + 8 + h] = h16(a[2] >> (16 * h), f16), h16(a[3] >> (16 * h), f16)
            B[2 * tq + h, g], B[2 * tq + 8 + h, g] = h16(b[0] >> (16 * h), f16), h16(b[1] >> (16 * h), f16)
            C[g, 2 * tq + h], C[g + 8, 2 * tq + h] = c[h], c[2 + h]
    D = A @ B + C
    for lane in range(32):
        g, tq = lane // 4, lane % 4
        out = [D[g, 2 * tq], D[g, 2 * tq + 1], D[g + 8, 2 * tq], D[g + 8, 2 * tq + 1]]
        for name, v in zip(dn, out):
            regs[lane][name] = bits32(v)


def _load(r: dict, args: str, val, word) -> None:
    """``ld.{global,shared}[...][.v2|.v4].<type> dst, [addr(+off)]``: consecutive words, ``word(address)`` each."""
    m = re.match(r"(\{[^}]*\}|\S+),\s*(\[.*\])", args)
    addr = _addr(m.group(2), val)
    for k, name in enumerate(t.strip() for t in m.group(1).strip("{}").split(",")):
        r[name] = word(addr + 4 * k)


class Shared:
    """The block's shared memory (bytes by address) and each lane's ``cp.async`` groups: the open one, then the
    committed ones oldest first, each a list of ``(address, bytes)`` copies."""

    def __init__(self, lanes: int) -> None:
        self.bytes: dict[int, int] = {}
        self.open: list[list] = [[] for _ in range(lanes)]
        self.groups: list[list[list]] = [[] for _ in range(lanes)]

    def wait(self, lane: int, n: int) -> None:
        """``cp.async.wait_group n``: every committed group of ``lane`` but the ``n`` newest lands."""
        groups = self.groups[lane]
        while len(groups) > n:
            for addr, data in groups.pop(0):
                for i, b in enumerate(data):
                    self.bytes[addr + i] = b

    def word(self, lane: int, addr: int) -> int:
        pending = [(a, len(d)) for g in self.groups[lane] + [self.open[lane]] for a, d in g]
        assert not any(a < addr + 4 and addr < a + n for a, n in pending), \
            f"ld.shared of a copy still in flight at {addr}"
        assert all(addr + i in self.bytes for i in range(4)), f"ld.shared of bytes nothing wrote at {addr}"
        return int.from_bytes(bytes(self.bytes[addr + i] for i in range(4)), "little")


def _addr(text: str, val) -> int:
    """``[reg]`` or ``[reg+imm]``."""
    m = re.fullmatch(r"\[([^\]+]+)(?:\+(\d+))?\]", text.strip())
    return val(m.group(1)) + int(m.group(2) or 0)


def run(asm: str, operands: list[dict[int, int]], mem: Optional[Memory] = None,
        f16: bool = False) -> list[dict[int, int]]:
    """Run ``asm`` for ``len(operands)`` lanes in lockstep (32 for a block with ``mma``); ``operands[l]``: ``$n`` ->
    value of lane ``l`` (lane ``l`` is thread ``l`` of its block: ``%tid.x``). Branches must be uniform. Returns
    each lane's ``$n`` operands after the block (the outputs among them)."""
    lines = [s.strip().rstrip(";") for s in asm.split("\n")]
    body = [s for s in lines if s and not s.startswith((".reg", ".shared")) and s not in ("{", "}")]
    labels = {s[:-1]: i for i, s in enumerate(body) if s.endswith(":")}
    # a .shared array's name reads as its address (0: the block's shared window)
    symbols = {m.group(1): 0 for m in re.finditer(r"^\.shared\s.*?(\S+)\[\d+\]$", "\n".join(lines), re.M)}
    regs = [{f"${k}": v for k, v in ops.items()} for ops in operands]
    lanes = range(len(regs))
    for lane in lanes:
        regs[lane]["%tid.x"] = lane
    shared = Shared(len(regs))

    def val(lane: int, tok: str) -> int:
        tok = tok.strip()
        if tok in regs[lane]:
            return regs[lane][tok]
        if tok in symbols:
            return symbols[tok]
        return int(tok[2:], 16) if tok.startswith("0f") else int(tok, 0)

    pc, steps = 0, 0
    while pc < len(body):
        steps += 1
        assert steps < 200000, "runaway loop"
        ins, pc = body[pc], pc + 1
        if ins.endswith(":"):
            continue
        pred = None
        if ins.startswith("@"):
            pred, ins = ins.split(None, 1)
            pred = pred[1:]
        op, _, args = ins.partition(" ")
        if op == "bra":
            taken = [pred is None or regs[lane][pred] for lane in lanes]
            assert all(taken) or not any(taken), "divergent branch"
            pc = labels[args.strip()] if taken[0] else pc
        elif op.startswith("mma.sync"):
            _mma(regs, args, val, f16)
        elif op == "shfl.sync.bfly.b32":      # d, a, lane mask, clamp, member mask: every lane reads lane ^ mask
            d, a, m, _, members = [t.strip() for t in args.split(",")]
            assert pred is None and int(members, 0) == M32 and len(regs) == 32, "a whole warp's shfl.sync"
            src = [val(lane, a) for lane in lanes]
            for lane in lanes:
                regs[lane][d] = src[lane ^ int(m, 0)]
        elif op.startswith(("cp.async.ca.", "cp.async.cg.")):   # cp.async.{ca,cg}.shared.global [dst], [src], size
            dst, src, size = [t.strip() for t in args.split(",")]
            for lane in lanes:
                if pred is None or regs[lane][pred]:
                    a = _addr(src, lambda t, lane=lane: val(lane, t))
                    assert a % int(size) == 0, f"cp.async source not aligned to its size: {a:#x}"
                    data = b"".join(mem.word(a + 4 * i).to_bytes(4, "little") for i in range(int(size) // 4))
                    shared.open[lane].append((_addr(dst, lambda t, lane=lane: val(lane, t)), data))
        elif op in ("griddepcontrol.wait", "griddepcontrol.launch_dependents"):
            pass                             # one kernel, nothing before or after it
        elif op == "cp.async.commit_group":
            for lane in lanes:
                shared.groups[lane].append(shared.open[lane])
                shared.open[lane] = []
        elif op == "cp.async.wait_group":
            for lane in lanes:
                shared.wait(lane, int(args))
        elif op.startswith(("ld.shared", "ld.global")):
            for lane in lanes:
                if pred is None or regs[lane][pred]:
                    word = (lambda a, lane=lane: shared.word(lane, a)) if op.startswith("ld.shared") else mem.word
                    _load(regs[lane], args, lambda t, lane=lane: val(lane, t), word)
        else:
            assert op in ALU, f"instruction {op} not modelled"
            d, *src = [t.strip() for t in args.split(",")]
            for lane in lanes:
                if pred is None or regs[lane][pred]:
                    v = ALU[op]([val(lane, t) for t in src])
                    regs[lane][d] = v if op in WIDE else v & M32
    return [{int(k[1:]): v for k, v in r.items() if re.fullmatch(r"\$\d+", k)} for r in regs]

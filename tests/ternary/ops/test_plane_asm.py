"""The inline PTX of ``triton_common.plane_signs16`` (two table lookups by ``prmt.b32`` for four weights), run by a
small interpreter of the PTX instructions it uses (``tests/ptxsim.py``), gives the 16-bit float -1 / 0 / +1 of every
code of every byte, as its interpreter branch does: the GPU-only code path checked on the CPU, bit for bit."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from ptxsim import run  # noqa: E402  (tests/ is on sys.path: conftest.py)

from arbitor.ternary.ops.triton_common import _PLANE_ASM, SIGN_TABLES  # noqa: E402


def run_asm(asm: str, operands: dict[int, int]) -> dict[int, int]:
    """Execute the asm for one lane (``tests/ptxsim.py``); ``$n`` operands in, output ``$n`` out."""
    return run(asm, [operands])[0]


ONE = {"bf16": 0x3F80, "fp16": 0x3C00}


def _expected(byte: int, j: int, kind: str) -> int:
    """The pattern of code ``j`` of ``byte``: 0, +1, -1 (the sign bit set); the invalid code 3 reads as 0."""
    c = (byte >> (2 * j)) & 3
    return {0: 0, 1: ONE[kind], 2: ONE[kind] | 0x8000, 3: 0}[c]


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_plane_asm_gives_the_sign_of_every_code_of_every_byte(kind):
    t_hi, t_lo = SIGN_TABLES[kind]
    for first in range(0, 256, 4):
        bytes4 = [first, first + 1, first + 2, first + 3]
        word = sum(b << (8 * i) for i, b in enumerate(bytes4))
        # $8 the four bytes, $9-$12 / $13-$16 the tables of the four elements (the same value)
        ops = {8: word, **{9 + e: t_hi for e in range(4)}, **{13 + e: t_lo for e in range(4)}}
        out = run_asm(_PLANE_ASM.value, ops)
        for j in range(4):
            for e in range(4):                       # output j: registers 2j (bytes 0, 1) and 2j + 1 (2, 3)
                got = (out[2 * j + e // 2] >> (16 * (e % 2))) & 0xFFFF
                assert got == _expected(bytes4[e], j, kind), (j, e, bytes4[e])


@pytest.mark.parametrize("dtype,kind", [(torch.bfloat16, "bf16"), (torch.float16, "fp16")])
def test_sign_tables_are_the_types_plus_and_minus_one(dtype, kind):
    t_hi, t_lo = SIGN_TABLES[kind]
    for c, value in ((1, 1.0), (2, -1.0), (0, 0.0), (3, 0.0)):
        bits = (((t_hi >> (8 * c)) & 0xFF) << 8) | ((t_lo >> (8 * c)) & 0xFF)
        assert torch.tensor([bits], dtype=torch.int32).to(torch.int16).view(dtype).item() == value

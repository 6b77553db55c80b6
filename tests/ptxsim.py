"""What the CPU interpreters of inline PTX in the kernel tests share (``tests/ternary/ops/test_plane_asm.py``,
``test_decode_tc.py``): the byte permute ``prmt.b32``."""
from __future__ import annotations


def prmt(a: int, b: int, sel: int) -> int:
    """``prmt.b32 d, a, b, sel`` (default mode): output byte ``i`` = byte ``sel``'s nibble ``i`` of ``b:a``."""
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = 0
    for i in range(4):
        nib = (sel >> (4 * i)) & 0xF
        assert nib < 8, "sign-replicate mode is never used"
        out |= src[nib] << (8 * i)
    return out

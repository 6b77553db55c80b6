import os
import sys
from pathlib import Path

import pytest
import torch

# Without CUDA the Triton kernels run in Triton's CPU interpreter. The switch must be set before anything imports
# triton: some test modules import libraries (peft) that import triton, and triton then keeps the mode it
# started in -- the kernel tests, which used to set it themselves, would fail with "Cannot call @triton.jit'd
# outside of the scope of a kernel".
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/golden as an importable helper package


@pytest.fixture
def fp8_for_small_layers(monkeypatch):
    """``fp8_pays`` and ``fp8_matmul_pays`` (``arbitor/ternary/ops/fp8.py``) for any layer whose sides are multiples
    of 16: the measured thresholds need 3072 a side, more than a test's layers have."""
    from arbitor.ternary.ops import fp8
    monkeypatch.setattr(fp8, "FP8_MIN_WEIGHTS", 0)
    monkeypatch.setattr(fp8, "FP8_MIN_FEATURES", 0)

"""``benchmarks/gemv_ncu.py``, the launcher ncu profiles: its arguments, and a one-line refusal without CUDA."""
from __future__ import annotations

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_in_one_line_with_exit_2(load_benchmark, capsys):
    mod = load_benchmark("gemv_ncu")
    assert mod.main(["--K", "512", "--N", "64", "--kernel", "tc", "--config", "GROUP_COLUMNS=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gemv_ncu.py: needs a CUDA device"


def test_bad_kernel_name_is_an_argparse_error(load_benchmark):
    mod = load_benchmark("gemv_ncu")
    with pytest.raises(SystemExit) as exc:
        mod.main(["--kernel", "cudnn"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        mod.main(["--layout", "tiles"])
    assert exc.value.code == 2

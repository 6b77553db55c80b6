import pytest
import torch

from arbitor.ternary.ops import backend


def test_requested_backend_values(monkeypatch):
    monkeypatch.delenv("ARB_TERNARY_BACKEND", raising=False)
    assert backend.requested_backend() == "auto"
    assert backend.resolve_backend(torch.device("cpu")) == "torch"
    monkeypatch.setenv("ARB_TERNARY_BACKEND", "Torch")
    assert backend.requested_backend() == "torch"
    monkeypatch.setenv("ARB_TERNARY_BACKEND", "cuda")
    with pytest.raises(ValueError, match="ARB_TERNARY_BACKEND must be one of"):
        backend.requested_backend()


def test_tilelang_is_refused_with_the_reason():
    with pytest.raises(RuntimeError, match="corr_accum"):
        backend.requested_backend("tilelang")


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        backend.resolve_backend(torch.device("cpu"), "triton")

"""CUDA checks of the trainer (skipped without a GPU; run through the device tool)."""
import pytest
import torch

from arbitor.data import BUNDLED_TEXT_PATH
from arbitor.ternary.layer import TernaryScaleTensor
from arbitor.ternary.step import ternary_step
from arbitor.train import ModelSettings, TextConfig, TrainConfig, build_run

TEXT = TextConfig(text_data=str(BUNDLED_TEXT_PATH))

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_cuda_memory_does_not_grow_across_steps(backend):
    tcfg = TrainConfig(steps=6, batch=8, ctx=64, eval_batches=2)
    tr = build_run("text", tcfg, TEXT, ModelSettings(preset="small", backend=backend), device="cuda")
    tr.train_step()
    torch.cuda.synchronize()
    allocated = []
    for _ in range(4):
        torch.cuda.reset_peak_memory_stats()
        tr.train_step()
        torch.cuda.synchronize()
        allocated.append(torch.cuda.memory_allocated())
        peak = torch.cuda.max_memory_allocated()
    assert len(set(allocated)) == 1, allocated          # nothing from step N alive at step N+1
    assert peak > allocated[-1]                         # the step did allocate (and free) activations
    print(f"[{backend}] allocated after each step: {allocated[-1] / 2**20:.2f} MiB, peak {peak / 2**20:.2f} MiB")


def test_cuda_matches_cpu_closely():
    tcfg = TrainConfig(steps=3, batch=4, ctx=32, eval_batches=2)
    cpu = build_run("text", tcfg, TEXT, ModelSettings(backend="torch"))
    gpu = build_run("text", tcfg, TEXT, ModelSettings(backend="torch"), device="cuda")
    for _ in range(3):
        lc, lg = float(cpu.train_step()["text"]), float(gpu.train_step()["text"])
        assert abs(lc - lg) < 1e-3 * max(1.0, abs(lc)), (lc, lg)


def test_counter_rule_on_cuda_matches_cpu_state():
    """The counter rule on CUDA (Triton grad_x, cuBLAS grad_W) moves the same trits/counters as on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    layers = {dev: TernaryScaleTensor(256, 96, group_size=32, seed=4, update_rule="counter", counter_bits=4,
                                      counter_rate=0.5, device=dev) for dev in ("cpu", "cuda")}
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(64, 256, generator=g) for _ in range(3)]
    for x in xs:
        for dev, layer in layers.items():
            layer(x.to(dev)).pow(2).sum().backward()
            ternary_step(layer)
    a, b = layers["cpu"].state_dict(), layers["cuda"].state_dict()
    for k in a:
        same = (a[k] == b[k].cpu()).float().mean().item()
        assert same > 0.999, (k, same)     # a near-zero grad_W may round to the other sign on another device

"""``benchmarks/bench_speed.py``'s model materializer (shared by the speed, decode, fine-tune and multi-GPU
benchmarks), on the CPU: a model built on ``meta`` comes out with every buffer defined."""
import torch


def test_materialize_defines_every_ternary_buffer(load_benchmark):
    bench = load_benchmark("bench_speed")
    from arbitor.ternary import TernaryScaleTensor
    layer = TernaryScaleTensor(48, 24, 16, update_rule="counter", counter_rate=0.375, device="meta")
    layer.set_rate_factor(0.5)
    real = bench._materialize(layer, torch.device("cpu"), torch.float32)
    assert float(real.rate) == 0.375 * 0.5                  # to_empty leaves it undefined: refilled from the rule
    assert int(real.pending) == 0 and int(real.step_counter) == 8 and not real.corr_accum.any()
    x = torch.randn(5, 48)
    real(x).pow(2).sum().backward()                          # a ballot with the materialized state runs
    assert real.pending_ballots == 1

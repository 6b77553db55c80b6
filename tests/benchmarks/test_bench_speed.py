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


def test_3b_rows_carry_the_memory_target_for_bigint_only(load_benchmark):
    """Issue 13 gives the 3b step's <= 3.2 GB "for bigint" and lets counter report its own figures."""
    bench = load_benchmark("bench_speed")
    for rule in bench.RULES:
        want = {"target_peak_mib": 3052} if rule.startswith("bigint") else {}
        assert bench.memory_target(rule) == want, rule


def test_recompute_3b_is_checked_before_any_device_work(load_benchmark, capsys):
    bench = load_benchmark("bench_speed")
    assert bench._recompute_counts("all,21,16") == [None, 21, 16]
    for arg, needle in (("all,x", "expected 'all' or block counts"), ("23", "must lie in [0, 22]")):
        try:
            bench.main(["--recompute-3b", arg])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"--recompute-3b {arg} was accepted")
        assert needle in capsys.readouterr().err

import torch
from torch import nn

from arbitor.cli import main
from arbitor.ternary.audit import format_audit, ternary_audit
from arbitor.ternary.layer import TernaryScaleTensor


def test_one_layer_bytes_are_exact():
    K, N, g = 1024, 384, 64
    rep = ternary_audit(TernaryScaleTensor(K, N, group_size=g, seed=0))
    groups = N * K // g
    assert rep["logical_ternary_weights"] == K * N
    assert rep["state_bytes"]["T_packed"] == K * N // 4          # 2 bits per weight
    assert rep["state_bytes"]["E"] == groups                      # int8
    assert rep["state_bytes"]["corr_accum"] == 8 * groups         # int64
    assert rep["state_bytes"]["step_counter"] == 8
    assert rep["training_state_bytes"] == K * N // 4 + 9 * groups + 8
    assert rep["trainable_float_params"] == 0 and rep["pure_ternary"]


def test_float_parameters_and_frozen_buffers_are_reported():
    model = nn.Sequential(TernaryScaleTensor(64, 32, group_size=16, seed=0), nn.Linear(32, 4))
    model.register_buffer("decay", torch.ones(10))
    model.register_buffer("T_accum", torch.zeros(5, 3, dtype=torch.int8))
    rep = ternary_audit(model)
    assert rep["trainable_float_params"] == 32 * 4 + 4 and not rep["pure_ternary"]
    assert rep["trainable_float_param_names"] == ["1.weight", "1.bias"]
    assert rep["frozen_float_elements"] == 10 and rep["frozen_float_bytes"] == 40
    assert rep["state_bytes"]["T_accum"] == 15
    model[1].requires_grad_(False)
    rep = ternary_audit(model)
    assert rep["trainable_float_params"] == 0 and rep["frozen_float_elements"] == 10 + 132
    text = format_audit(rep)
    assert "trainable float params" in text and "T_accum" in text


def test_cli_audit_table_and_errors(capsys):
    assert main(["audit", "--layer", "256", "128", "--group-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "32,768" in out and "8,192 B" in out and "trainable float params   0" in out
    assert main(["audit", "--layer", "100", "128"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a multiple of group_size" in err


def test_defaults_are_the_study_winner_within_each_presets_memory_budget(capsys):
    """docs/quality.md, "Defaults": the counter rule won the full-budget study, so it is the model default, with
    5-bit counters (the longer ladder won on the CPU) at <= 1 B/weight of state in every preset that uses it; the
    `3b` preset keeps bigint because counter state (1.02 B/weight at 5 bits) would pass the spec's 2.04 GB."""
    import json

    from arbitor.model.config import preset
    from arbitor.ternary.config import TernaryConfig
    assert TernaryConfig().update_rule == "counter"
    assert TernaryConfig().counter_rate == 1.0 and TernaryConfig().counter_bits == 5
    assert {n: preset(n).ternary.update_rule for n in ("tiny", "small", "base", "medium")} == dict.fromkeys(
        ("tiny", "small", "base", "medium"), "counter")
    for name in ("tiny", "small", "base", "medium"):              # issue 18: state <= 1 B/weight
        assert main(["audit", "--preset", name, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["state_bytes_per_weight"] <= 1.0, name
    assert preset("3b").ternary.update_rule == "bigint"
    budget = 2.04e9
    for rule, fits in (("bigint", True), ("counter", False)):
        args = ["audit", "--preset", "3b", "--json"] + (["--update-rule", rule] if rule == "counter" else [])
        assert main(args) == 0
        state = json.loads(capsys.readouterr().out)["training_state_bytes"]
        assert (state <= budget) is fits, (rule, state)
    assert main(["audit", "--layer", "128", "64", "--json"]) == 0      # the spec's layer keeps its default
    assert json.loads(capsys.readouterr().out)["state_bytes"]["C_packed"] == 0   # bigint: no counters

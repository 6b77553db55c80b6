"""The 3-step memory probe on the CPU (issue 5's CI check): exact state bytes, no growth across steps."""
import json

from arbitor.cli import main
from arbitor.model.config import preset
from arbitor.train.probe import probe_memory


def test_tiny_probe_state_bytes_are_exact_and_memory_is_flat(tmp_path):
    cfg = preset("tiny", ternary={"update_rule": "bigint"})   # the spec's layout (the counter rule adds C_packed)
    d, L, V, g = cfg.d_model, cfg.n_layers, cfg.vocab_size, cfg.ternary.group_size
    per_block = (5 + len(cfg.lti_decays) + 2 * cfg.mlp_mult) * d * d
    weights = L * per_block + 2 * V * d
    lines = []
    rep = probe_memory(cfg, steps=3, batch=2, ctx=16, device="cpu", out=tmp_path / "p.json", print_fn=lines.append)
    assert rep["logical_ternary_weights"] == weights
    n_dense_layers = L * (5 + 1 + 2) + 1
    expected = (weights // 4                                          # T_packed: 2 bits per weight
                + (weights - V * d) // g * 9                         # dense layers: E int8 + corr_accum int64
                + V * d // cfg.embedding_group_size * 9              # embedding rows' groups
                + 8 * n_dense_layers + 8 * V)                        # step_counters (one per embedding row)
    assert rep["training_state_bytes"] == expected
    allocs = [s["alloc_mb"] for s in rep["steps"]]
    assert allocs[0] == allocs[1] == allocs[2]
    assert all(s["live_after_step_bytes"] == 0 for s in rep["steps"])
    assert all(s["peak_mb"] > s["alloc_mb"] for s in rep["steps"])  # a step does allocate, and frees it all
    assert lines[0] == f"logical_ternary_weights {weights}"
    assert lines[3].startswith("step 0 alloc_mb ")
    assert json.loads((tmp_path / "p.json").read_text())["steps"][2]["step"] == 2


def test_probe_memory_cli(capsys, tmp_path):
    assert main(["probe-memory", "--preset", "tiny", "--steps", "2", "--device", "cpu",
                 "--json", str(tmp_path / "probe.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("logical_ternary_weights ") and out[-1].startswith("step 1 alloc_mb")
    assert main(["probe-memory", "--preset", "huge"]) == 2
    assert "unknown preset" in capsys.readouterr().err

"""bench_decode: the sweep's output check (``sweep_error`` and its tolerance), its grids, its flags."""
import pytest
import torch

from arbitor.ternary.format import pack_ternary
from arbitor.ternary.ops.linear import decode_forward_torch


def test_sweep_check_passes_bf16_rounding_and_flags_wrong_outputs(load_benchmark):
    mod = load_benchmark("bench_decode")
    g = torch.Generator().manual_seed(0)
    N, K, gs = 48, 256, 64
    T_packed = pack_ternary(torch.randint(-1, 2, (N, K), generator=g))
    S = torch.rand(N, K // gs, generator=g) + 0.5
    x = torch.randn(4, K, generator=g)
    y_ref = decode_forward_torch(x, T_packed, S, K, gs)
    bf16 = decode_forward_torch(x.bfloat16(), T_packed, S, K, gs).float()   # what a correct bf16 kernel returns
    assert mod.sweep_error(bf16, y_ref) < mod.SWEEP_TOLERANCE
    wrong = y_ref.clone()
    wrong[:, : N // 8] *= 1.5                                               # one tile of columns off
    assert mod.sweep_error(wrong, y_ref) > mod.SWEEP_TOLERANCE
    wrong[0, 0] = float("nan")
    assert mod.sweep_error(wrong, y_ref) == float("inf")
    assert mod._sweep_paths(1, ["gemv", "mma", "planes"]) == ("gemv", "planes")
    assert mod._sweep_paths(4, ["gemv", "mma", "planes"]) == ("mma", "planes")


def test_tc_sweep_grids_are_valid_configs(load_benchmark):
    """The ``tc`` path is swept at every M; both of its grids hold only configs ``tc_forward`` accepts (the
    warp-split grid: WARP_SPLIT configs plus the default tiles, for a comparison in one run; the group-columns grid:
    one row only, GROUP_COLUMNS configs plus the default tile)."""
    from arbitor.ternary.ops.decode_tc import tc_forward
    mod = load_benchmark("bench_decode")
    assert mod._sweep_paths(1, ["tc"]) == ("tc",) and mod._sweep_paths(16, ["tc"]) == ("tc",)
    full, ws = mod._sweep_configs(1, "tc"), mod._sweep_configs(1, "tc", "warp-split")
    assert not any(c.get("WARP_SPLIT") for c in full) and sum(bool(c.get("WARP_SPLIT")) for c in ws) == len(ws) - 2
    gcs = mod._sweep_configs(1, "tc", "group-columns")
    assert mod._sweep_configs(4, "tc", "group-columns") == []
    assert sum(bool(c.get("GROUP_COLUMNS")) for c in gcs) == len(gcs) - 1
    gca = mod._sweep_configs(1, "tc", "group-columns-ahead")
    assert mod._sweep_configs(4, "tc", "group-columns-ahead") == []
    assert sum(c["AHEAD"] > 1 and c["GROUP_COLUMNS"] for c in gca) == len(gca) - 2
    ring = mod._sweep_configs(1, "tc", "ring")
    assert all(c["RING"] >= 2 for c in ring[:-3]) and mod._sweep_configs(16, "tc", "ring")   # + the 3 defaults
    import torch
    from arbitor.ternary.format import pack_ternary
    from arbitor.ternary.ops.decode_tc import tc_tile
    for cfg in ring:          # every ring config fits its shared memory
        assert tc_tile(1, 256, cfg) is not None
    T_packed = pack_ternary(torch.randint(-1, 2, (16, 256), generator=torch.Generator().manual_seed(0)))
    for cfg in full[:1] + ws[:1] + gcs[:1] + gca[:1] + gca[-2:] + ring[:1] + ring[-3:]:
        # unknown keys raise ValueError before any launch; known ones are taken (checked here on the CPU)
        tc_forward(torch.zeros(1, 256, dtype=torch.bfloat16), T_packed, torch.ones(16, 4), 256, 64, config=cfg)


def test_models_flag_names_what_it_takes(load_benchmark):
    """``--models`` takes the built models only (the fused ones with ``--fuse``), refused in one line before any
    model is built."""
    mod = load_benchmark("bench_decode")
    with pytest.raises(SystemExit, match="--models: comma list of ternary, dense .*got 'dense-fused'"):
        mod.main(["--device", "cpu", "--models", "dense-fused"])
    with pytest.raises(SystemExit, match="--models: .*got 'ternary,bitnet'"):
        mod.main(["--device", "cpu", "--fuse", "--models", "ternary,bitnet"])
    with pytest.raises(SystemExit, match="--models: a row needs a ternary and a dense model; got 'ternary-fused'"):
        mod.main(["--device", "cpu", "--fuse", "--models", "ternary-fused"])


def test_inductor_options_flag(load_benchmark, capsys):
    """``--inductor-options NAME:KEY=VALUE,...``: values read as JSON where they parse, else strings; a malformed
    one is refused by argparse in one line (exit 2)."""
    mod = load_benchmark("bench_decode")
    assert mod.inductor_variant("combo:combo_kernels=true,max_autotune=false") == (
        "combo", {"combo_kernels": True, "max_autotune": False})
    assert mod.inductor_variant("t:triton.num_stages=3,mode=max") == ("t", {"triton.num_stages": 3, "mode": "max"})
    for bad in ("combo", "combo:", ":a=1", "combo:a", "combo:=1"):
        with pytest.raises(SystemExit) as exit_info:
            mod.main(["--device", "cpu", "--inductor-options", bad])
        assert exit_info.value.code == 2
        assert f"--inductor-options wants NAME:KEY=VALUE[,KEY=VALUE], got {bad!r}" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--inductor-options: each variant needs its own name .*got a, a"):
        mod.main(["--device", "cpu", "--inductor-options", "a:x=1", "--inductor-options", "a:y=2"])
    with pytest.raises(SystemExit, match="takes 'pdl'.*got pdl, pdl"):
        mod.main(["--device", "cpu", "--inductor-options", "pdl:x=1", "--inductor-pdl"])


def test_a_recompile_past_the_limit_fails_instead_of_running_uncompiled(load_benchmark, monkeypatch):
    """``main`` runs the measurements with Dynamo's ``fail_on_recompile_limit_hit`` (a variant past the limit raises,
    is reported as failed, and is not timed eagerly under its compiled name), and leaves the setting as it was."""
    import torch._dynamo
    mod = load_benchmark("bench_decode")
    seen = []
    monkeypatch.setattr(mod, "_run", lambda *a: seen.append(torch._dynamo.config.fail_on_recompile_limit_hit) or 0)
    before = torch._dynamo.config.fail_on_recompile_limit_hit
    assert mod.main(["--device", "cpu"]) == 0
    assert seen == [True] and torch._dynamo.config.fail_on_recompile_limit_hit == before


def test_cpu_rows_with_fused_variants(load_benchmark, tmp_path):
    """``--fuse`` on the CPU: both models also with fused projections; each side's figure is its fastest variant,
    named in the row, and ``--models`` keeps only the ones asked for."""
    mod = load_benchmark("bench_decode")
    common = ["--device", "cpu", "--preset", "tiny", "--batches", "1", "--prompt", "4", "--new", "5", "--reps", "1",
              "--no-compile", "--out-dir", str(tmp_path)]
    mod.main(common + ["--fuse"])
    assert torch.is_grad_enabled()       # the benchmark leaves the caller's grad mode alone
    import json
    row = json.loads((tmp_path / "cpu.json").read_text())["rows"][0]
    assert {k.split("/")[0] for k in row["variants_tokens_per_s"]} == {"ternary", "dense", "ternary-fused",
                                                                       "dense-fused"}
    best = max((t, k) for k, t in row["variants_tokens_per_s"].items() if k.startswith("dense"))
    assert row["baseline_tokens_per_s"] == best[0] and best[1] in row["baseline"]
    mod.main(common + ["--fuse", "--models", "ternary-fused,dense"])
    row = json.loads((tmp_path / "cpu.json").read_text())["rows"][0]
    assert {k.split("/")[0] for k in row["variants_tokens_per_s"]} == {"ternary-fused", "dense"}


def test_gpu_decode_rows_logic_on_the_cpu(load_benchmark):
    """The GPU rows' bookkeeping, run on the CPU with graphs off (tiny preset): with ``--fuse`` both models are
    measured fused too, each side's figure is its fastest variant, and the fast paths' tokens are compared with the
    eager path of the same (ternary) model on the same prompt."""
    import argparse
    mod = load_benchmark("bench_decode")
    args = argparse.Namespace(preset="tiny", prompt=8, new=6, batches=[1], decode_reps=1, fuse=True, models=None,
                              profile=False, profile_fast=False, compile=False, compile_batches="1",
                              inductor_pdl=False, inductor_options=[], eager_new=2)
    res = {"rows": []}
    with torch.no_grad():
        mod.gpu_decode_rows(args, torch.device("cpu"), res, lambda: None)
    row = res["rows"][0]
    assert set(row["variants_tokens_per_s"]) == {"ternary/graph", "dense/graph", "ternary-fused/graph",
                                                 "dense-fused/graph"}
    for side, key in (("ternary", "arbitor"), ("dense", "baseline")):
        best = max((t, k) for k, t in row["variants_tokens_per_s"].items() if k.startswith(side))
        assert row[f"{key}_tokens_per_s"] == best[0] and best[1] in row[key]
    assert res["fast_vs_eager_tokens"] == {"ternary/graph_b1": "3/3 leading tokens equal",
                                           "ternary-fused/graph_b1": "3/3 leading tokens equal"}


def test_gemv_shapes_flag(load_benchmark, capsys):
    mod = load_benchmark("bench_decode")
    assert mod.gemv_shapes("3072:3072,6144:3072") == [(3072, 3072), (6144, 3072)]
    for bad in ("3072", "3000:3072", "3072:0", "a:b", "3072:3072:1"):
        with pytest.raises(SystemExit, match="--gemv-shapes: comma list of K:N"):
            mod.gemv_shapes(bad)
        with pytest.raises(SystemExit) as exc:
            mod.main(["--device", "cpu", "--parts", "gemv", "--gemv-shapes", bad])
        assert "--gemv-shapes" in str(exc.value)

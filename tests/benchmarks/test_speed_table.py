"""The README's speed table is the one generated from benchmarks/results/speed/h200.json."""
import json


def test_readme_speed_table_matches_the_results_file(load_benchmark):
    assert load_benchmark("speed_table").main(["--check"]) == 0


def test_table_reports_range_target_and_miss(tmp_path, load_benchmark):
    mod = load_benchmark("speed_table")
    rows = [{"name": "layer_fwd", "shape": f"s{i}", "update_rule": "any", "ratio": r, "target_ratio": 0.93}
            for i, r in enumerate((0.95, 0.91))]
    res = {"device_name": "GPU X", "rows": rows}
    line = mod.table(res).splitlines()[-1]
    assert "| any | 2 | 0.91-0.95x | 0.93x | no |" in line
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{mod.START}\nold\n{mod.END}\nb\n")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res))
    assert mod.main(["--check", "--readme", str(readme), "--results", str(path)]) == 1
    assert mod.main(["--readme", str(readme), "--results", str(path)]) == 0
    assert mod.main(["--check", "--readme", str(readme), "--results", str(path)]) == 0
    assert readme.read_text().startswith("a\n") and readme.read_text().endswith("\nb\n")


def test_a_row_with_a_note_is_marked_and_its_note_printed(load_benchmark):
    mod = load_benchmark("speed_table")
    rows = [{"name": "layer_fwd", "shape": "s", "update_rule": "any", "ratio": 1.0, "target_ratio": 0.93},
            {"name": "step_3b_8x512", "shape": "3b", "update_rule": "counter", "ratio": 0.5, "target_ratio": 1.0,
             "note": "measured with an older kernel"}]
    out = mod.table({"device_name": "GPU X", "rows": rows})
    assert "| counter | 1 | 0.50x (a) | 1.00x | no |" in out
    assert "| any | 1 | 1.00x | 0.93x | yes |" in out
    assert out.endswith("(a) measured with an older kernel")


def test_a_3b_row_meets_its_target_only_within_its_memory_target(load_benchmark):
    """The 3b step's target is speed and memory: 1.0x dense at <= 3.2 GB. A row as fast as dense that took more
    memory is a miss; each form of the step (after ``ctx N, `` in its shape) gets its own line."""
    mod = load_benchmark("speed_table")
    row = {"name": "step_3b_8x512", "update_rule": "bigint", "ratio": 1.0, "target_ratio": 1.0,
           "tokens_per_s": 30000.0, "target_peak_mib": 3052}
    rows = [dict(row, shape="3b preset, batch 8 x ctx 512, model compiled whole", peak_mib=7326.0),
            dict(row, shape="3b preset, batch 8 x ctx 512, blocks compiled", peak_mib=2454.0)]
    out = mod.table({"device_name": "GPU X", "rows": rows})
    assert "(model compiled whole) | bigint | 1 | 1.00x (30,000 tok/s, peak 7,326 MiB) | 1.00x | no |" in out
    assert "(blocks compiled) | bigint | 1 | 1.00x (30,000 tok/s, peak 2,454 MiB) | 1.00x | yes |" in out

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

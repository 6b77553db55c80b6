"""The quality study's machinery (benchmarks/quality.py): two rows, 3 steps, tiny shape, CPU."""
import json
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "tiny.txt"


def test_quality_two_rows(tmp_path, load_benchmark):
    q = load_benchmark("quality")
    data = tmp_path / "text.txt"
    data.write_text(("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 60))
    rc = q.main([str(data), "--shape", "tiny", "--steps", "3", "--eval-at", "2", "--eval-batches", "1",
                 "--device", "cpu", "--rows", "bitnet,counter-b2-r0.5-g32", "--out-dir", str(tmp_path / "out"),
                 "--time-limit", "120"])
    assert rc == 0
    res = json.loads((tmp_path / "out" / "quality-cpu.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["bitnet", "counter-b2-r0.5-g32"]
    for r in res["rows"]:
        assert r["status"] == "done", r["status"]
        assert [e["step"] for e in r["evals"]] == [0, 2, 3]
        assert r["tokens_per_s"] > 0
    by = {r["name"]: r for r in res["rows"]}
    assert by["counter-b2-r0.5-g32"]["pure_ternary"] and by["counter-b2-r0.5-g32"]["float_weights"] == 0
    assert by["bitnet"]["state_bytes_per_weight"] > 10  # fp32 weights + two AdamW moments
    assert res["common_step"] == 3
    md = (tmp_path / "out" / "quality-cpu.md").read_text()
    assert "| bitnet |" in md and "vs QAT" in md

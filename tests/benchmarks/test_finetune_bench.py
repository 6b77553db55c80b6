"""benchmarks/bench_finetune.py's --tiny CPU path: every method runs a step and the results are written."""
import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")


def test_bench_finetune_tiny(tmp_path, load_benchmark):
    bench = load_benchmark("bench_finetune")
    from arbitor.data import BUNDLED_TEXT_PATH
    bench.main(["--tiny", "--grad-ckpt", "--data", str(BUNDLED_TEXT_PATH), "--out-dir", str(tmp_path),
                "--batch", "2", "--seq", "16", "--warmup", "1", "--steps", "1"])
    doc = json.loads((tmp_path / "cpu.json").read_text())
    assert [r["method"] for r in doc["rows"]] == ["bf16-adamw", "lora", "arbitor-bigint", "arbitor-counter"]
    assert all("error" not in r and r["tokens_per_s"] > 0 for r in doc["rows"]), doc["rows"]
    assert (tmp_path / "cpu.md").exists()

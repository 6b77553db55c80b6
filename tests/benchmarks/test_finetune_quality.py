"""benchmarks/finetune_quality.py's machinery at tiny sizes: every row runs, the JSON has its layout, losses are
finite."""
import json
import math

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")


def test_finetune_quality_tiny(tmp_path, load_benchmark):
    bench = load_benchmark("finetune_quality")
    from arbitor.data import BUNDLED_TEXT_PATH
    a = tmp_path / "a.txt"
    a.write_text("To be, or not to be, that is the question.\n" * 40)
    bench.main(["--pretrain-data", str(a), "--finetune-data", str(BUNDLED_TEXT_PATH), "--out-dir", str(tmp_path),
                "--name", "q", "--hidden", "32", "--layers", "1", "--heads", "2", "--inter", "64", "--ctx", "16",
                "--pretrain-steps", "3", "--pretrain-batch", "2", "--ft-steps", "2", "--ft-batch", "2",
                "--val-windows", "2", "--full-lrs", "1e-3", "--lora-lrs", "1e-3,3e-3", "--bigint-strengths", "4",
                "--counter-rates", "0.5"])
    doc = json.loads((tmp_path / "q.json").read_text())
    assert {"device", "command", "rows"} <= set(doc)
    assert [r["method"] for r in doc["rows"]] == ["full-fp32-adamw", "lora", "arbitor-bigint", "arbitor-counter"]
    assert len(doc["rows"][1]["tried"]) == 2
    for r in doc["rows"]:
        keys = ["val_loss_B_float", "val_loss_B", "val_loss_A", "val_loss_A_float", "state_bytes_per_weight",
                "finetune_wall_s"] + (["val_loss_B_converted"] if r["method"].startswith("arbitor") else [])
        assert all(math.isfinite(r[k]) for k in keys), r
    assert doc["rows"][0]["state_bytes_per_weight"] == 16.0
    assert doc["rows"][2]["state_bytes_per_weight"] < 1.0 and doc["rows"][2]["trainable_float_params"] == 0
    assert (tmp_path / "q.md").read_text().count("| arbitor-") == 2

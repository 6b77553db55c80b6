"""Convert small transformers models (built from configs, no download) and fine-tune them with integer state.

For GPT-2 (``Conv1D`` projections, tied head) and Llama (untied head) at hidden size 64, 2 layers: 30 float
AdamW steps on the embedded corpus give the model structure; then the loss on a fixed batch before
conversion, right after ``arbitor.ternarize`` (group 32), and the mean training loss of the last 5 of 40
ternary steps (``loss.backward(); arbitor.ternary_step(model)``) for both update rules. CPU; writes
``<out-dir>/cpu-small.json|md``. The same path runs in ``tests/convert/test_convert.py``.

    PYTHONPATH=. python benchmarks/convert_small.py
"""
from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import transformers
    spec = importlib.util.spec_from_file_location("t", ROOT / "tests" / "convert" / "test_convert.py")
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    models = [("gpt2", transformers.GPT2LMHeadModel,
               transformers.GPT2Config(vocab_size=64, n_positions=64, n_embd=64, n_layer=2, n_head=2)),
              ("llama", transformers.LlamaForCausalLM,
               transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                        tie_word_embeddings=False))]
    rows = []
    for name, cls, cfg in models:
        for rule in ("bigint", "counter"):
            with tempfile.TemporaryDirectory() as d:
                before, after, losses = t._lm_roundtrip(cls(cfg), cls, 64, Path(d), rule=rule)
            rows.append({"model": name, "update_rule": rule, "float_loss": before, "converted_loss": after,
                         "first_ternary_step_loss": losses[0], "last5_ternary_loss": sum(losses[-5:]) / 5})
            print(rows[-1], flush=True)
    res = {"device": "cpu", "transformers": transformers.__version__,
           "command": "PYTHONPATH=. python benchmarks/convert_small.py", "rows": rows}
    out = ROOT / "benchmarks" / "results" / "finetune"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu-small.json").write_text(json.dumps(res, indent=1))
    lines = ["# Small transformers models: convert and fine-tune (CPU)", "", f"Command: `{res['command']}`", "",
             "| model | rule | float loss | right after ternarize | ternary step 1 | last 5 of 40 ternary steps |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['update_rule']} | {r['float_loss']:.3f} | {r['converted_loss']:.3f} | "
              f"{r['first_ternary_step_loss']:.3f} | {r['last5_ternary_loss']:.3f} |" for r in rows]
    (out / "cpu-small.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How exact the ``bitnet`` and ``gguf`` (TQ2_0) exports are: weight error, and for bitnet the logit and loss
drift of the model transformers loads back (docs/convert.md "Formats").

The model is the one ``tests/convert/test_formats.py`` uses: a 1-layer transformers Llama, hidden 256 (TQ2_0
rows need ``in_features % 256 == 0``), vocab 64, ``ternarize``d with the counter rule, then 0 or 3 ternary
steps on bytes of the data file (after steps the scales are no longer the fitted powers of two). The
"one scale per layer" bitnet row sets every group of a layer to one exponent first: bitnet's own layout.

    PYTHONPATH=. python benchmarks/export_drift.py [--data FILE] [--out-dir benchmarks/results/export]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import arbitor  # noqa: E402
from arbitor.convert import export, logit_drift, ternarize  # noqa: E402
from arbitor.convert.formats import llama_qk_permute, unpack_bitnet  # noqa: E402
from arbitor.data import BUNDLED_TEXT_PATH  # noqa: E402


def _llama(data: Path, group_size: int, steps: int, one_scale: bool = False):
    import transformers
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    ternarize(model, group_size=group_size, update_rule="counter", counter_rate=0.5)
    ids = (torch.tensor(list(data.read_bytes()[:4 * 33]), dtype=torch.int64) % 64).view(4, 33)
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        arbitor.ternary_step(model)
    if one_scale:
        for m in model.modules():
            if isinstance(m, arbitor.ternary.TernaryScaleTensor):
                m.E.fill_(int(m.E.float().mean().round()))
    return model.eval(), ids


def gguf_row(data: Path, group_size: int, steps: int, tmp: Path) -> dict:
    import gguf
    model, _ = _llama(data, group_size, steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = export(model, tmp / f"gguf-{group_size}-{steps}", format="gguf")
    tensors = {t.name: t for t in gguf.GGUFReader(str(report.file)).tensors}
    num = den = 0.0
    for hf, name, heads in [("model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight", 4),
                            ("model.layers.0.self_attn.k_proj", "blk.0.attn_k.weight", 2),
                            ("model.layers.0.mlp.down_proj", "blk.0.ffn_down.weight", None)]:
        W = model.get_submodule(hf).effective_weight()
        W = llama_qk_permute(W, heads) if heads else W
        got = torch.from_numpy(gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type))
        num += float((got - W).norm() ** 2)
        den += float(W.norm() ** 2)
    return {"export": "gguf TQ2_0", "group_size": group_size, "steps": steps, "exact": report.exact,
            "weight_rel_error": (num / den) ** 0.5}


def bitnet_row(data: Path, group_size: int, steps: int, one_scale: bool, tmp: Path) -> dict:
    import transformers
    model, ids = _llama(data, group_size, steps, one_scale)
    out = tmp / f"bitnet-{group_size}-{steps}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = export(model, out, format="bitnet")
    with torch._dynamo.config.patch(disable=True):   # BitLinear's @torch.compile: eager on the CPU
        loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        q = loaded.model.layers[0].self_attn.q_proj
        W = unpack_bitnet(q.weight).float() / q.weight_scale.float()
        ref = model.model.layers[0].self_attn.q_proj.effective_weight()
        drift = logit_drift(model, loaded, ids)
    return {"export": "bitnet", "group_size": group_size, "steps": steps, "one_scale_per_layer": one_scale,
            "exact": report.exact, "q_proj_weight_rel_error": float((W - ref).norm() / ref.norm()), **drift}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(BUNDLED_TEXT_PATH), help="bytes for the few training steps")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results" / "export"))
    args = ap.parse_args(argv)
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = [gguf_row(data, 256, 0, tmp), gguf_row(data, 256, 3, tmp), gguf_row(data, 64, 3, tmp),
                bitnet_row(data, 256, 0, True, tmp), bitnet_row(data, 64, 3, False, tmp)]
    res = {"device": "cpu", "torch": torch.__version__,
           "command": "PYTHONPATH=. python benchmarks/export_drift.py " + " ".join(argv or sys.argv[1:]), "rows": rows}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu.json").write_text(json.dumps(res, indent=1))
    lines = ["# Export exactness (cpu)", "", f"Command: `{res['command']}`", "",
             "1-layer Llama (hidden 256, vocab 64), counter rule; drift = the loaded model against arbitor's.", "",
             "| export | group | steps | layout matches | weight rel. error | logit drift (rel / max abs) "
             "| loss drift (nats) |", "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        err = r.get("weight_rel_error", r.get("q_proj_weight_rel_error"))
        drift = (f"{r['rel_logit']:.3f} / {r['max_abs_logit']:.3f}" if "rel_logit" in r else "-")
        loss = f"{r['loss_drift']:+.5f}" if "loss_drift" in r else "-"
        name = r["export"] + (", one scale per layer" if r.get("one_scale_per_layer") else "")
        lines.append(f"| {name} | {r['group_size']} | {r['steps']} | {'yes' if r['exact'] else 'no'} | {err:.2e} "
                     f"| {drift} | {loss} |")
    (out / "cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

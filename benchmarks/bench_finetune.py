"""Fine-tuning step cost at Llama-style 1B / 7B shapes: bf16 + fused AdamW, LoRA (peft) and arbitor.

Random weights built from ``transformers.LlamaConfig`` directly on the device in bf16 (no download).
Each method: ``--warmup`` steps, then ``--steps`` timed steps at ``--batch x --seq`` tokens on byte-level
tokens (mod vocab) of the ``--data`` text file; reports tokens/s, peak GPU memory, and the loss of the
first and last timed steps (a sanity check that each method trains, not a quality study).

* ``bf16-adamw``: every parameter bf16 (no fp32 master copy: 7B with one would not fit comfortably),
  ``torch.optim.AdamW(fused=True)``; ``--compile`` adds ``torch.compile`` (slow to compile at 7B).
* ``lora``: peft ``LoraConfig(r=16, alpha=32)`` on q,k,v,o,gate,up,down over the frozen bf16 base, AdamW.
* ``arbitor-<rule>``: ``arbitor.ternarize(model, update_rule=rule)`` (default group size rule, the untied
  head converted too), then ``loss.backward(); arbitor.ternary_step(model)``; no optimizer.

Gradient checkpointing (``--grad-ckpt``, transformers' ``gradient_checkpointing_enable``) applies to
every method; a method that fails with it is reported with its error. Results are written after every
row to ``<out-dir>/<device>.json|md``. ``--tiny`` runs a tiny config on the CPU (the test path).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._device import device_tag  # noqa: E402

SHAPES = {
    "1b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
               "intermediate_size": 8192, "vocab_size": 32000},
    "7b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
               "intermediate_size": 11008, "vocab_size": 32000},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "intermediate_size": 128, "vocab_size": 256},
}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _build(shape: str, dev, dtype):
    import transformers
    cfg = transformers.LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.device(dev):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM._from_config(cfg, dtype=dtype)
    return model


def _batches(data: Path, vocab: int, batch: int, seq: int, n: int, dev):
    raw = torch.tensor(list(data.read_bytes()[: (n + 1) * batch * seq]), dtype=torch.int64) % vocab
    need = n * batch * seq
    if raw.numel() < need:
        raw = raw.repeat(need // max(raw.numel(), 1) + 1)
    return raw[:need].view(n, batch, seq).to(dev)


def run_method(shape, method, args, dev, dtype, batches):
    row = {"model": shape, "method": method, "batch": args.batch, "seq": args.seq, "grad_ckpt": args.grad_ckpt,
           "steps": args.steps}
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    model = _build(shape, dev, dtype)
    opt = None
    if method.startswith("bf16-adamw"):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev.type == "cuda")
    elif method == "lora":
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM",
                                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                    "up_proj", "down_proj"]))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4,
                                fused=dev.type == "cuda")
    else:
        import arbitor
        report = arbitor.ternarize(model, update_rule=method.split("-", 1)[1])
        row["ternary_layers"] = len(report.converted)
        row["group_size"] = report.converted[0].group_size
    _sync(dev)
    row["setup_s"] = round(time.perf_counter() - t0, 2)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if method == "lora":
            model.enable_input_require_grads()
    model.train()
    fwd = model
    if method == "bf16-adamw-compile":
        fwd = torch.compile(model)
    import arbitor

    def step(ids):
        loss = fwd(input_ids=ids, labels=ids).loss
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            arbitor.ternary_step(model)
        return loss.detach()
    losses = []
    for i in range(args.warmup):
        losses.append(step(batches[i % len(batches)]))
    _sync(dev)
    t1 = time.perf_counter()
    for i in range(args.steps):
        losses.append(step(batches[(args.warmup + i) % len(batches)]))
    _sync(dev)
    dt = time.perf_counter() - t1
    row["step_s"] = round(dt / args.steps, 4)
    row["tokens_per_s"] = round(args.steps * args.batch * args.seq / dt, 1)
    row["loss_first"] = round(float(losses[0]), 4)
    row["loss_last"] = round(float(losses[-1]), 4)
    if dev.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return row


def _write(out_dir: Path, name: str, doc: dict):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=2))
    cols = ["model", "method", "batch", "seq", "grad_ckpt", "tokens_per_s", "peak_mem_gib", "step_s", "setup_s",
            "loss_first", "loss_last", "error"]
    lines = [f"# Fine-tuning step, {doc['device']}", "", f"`{doc['command']}`", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in doc["rows"]:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a text file (byte-level tokens mod vocab)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--shapes", default="1b,7b")
    p.add_argument("--methods", default="bf16-adamw,lora,arbitor-bigint,arbitor-counter")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--compile", action="store_true", help="also run bf16-adamw under torch.compile")
    p.add_argument("--tiny", action="store_true", help="tiny config on the CPU (test path)")
    args = p.parse_args(argv)
    dev = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    shapes = ["tiny"] if args.tiny else args.shapes.split(",")
    methods = args.methods.split(",") + (["bf16-adamw-compile"] if args.compile else [])
    name = device_tag(torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")
    doc = {"device": name, "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])), "rows": []}
    for shape in shapes:
        vocab = SHAPES[shape]["vocab_size"]
        batches = _batches(args.data, vocab, args.batch, args.seq, args.warmup + args.steps, dev)
        for method in methods:
            try:
                row = run_method(shape, method, args, dev, dtype, batches)
            except Exception as exc:  # noqa: BLE001 -- one method failing (e.g. OOM) must not lose the others
                row = {"model": shape, "method": method, "batch": args.batch, "seq": args.seq,
                       "grad_ckpt": args.grad_ckpt, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            doc["rows"].append(row)
            print(json.dumps(row), flush=True)
            _write(args.out_dir, name, doc)
    return doc


if __name__ == "__main__":
    main()

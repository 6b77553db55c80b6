"""Fine-tune quality: a float model pretrained here, then full fine-tuning, LoRA and arbitor's integer rules.

A byte-level transformers ``LlamaForCausalLM`` (built from a config, no download) is pretrained in float32
with AdamW on corpus A (``--pretrain-data``), then fine-tuned on corpus B (``--finetune-data``; default
``arbitor.data.default_corpus()``, the interpreter's standard-library docstrings: a domain shift) four ways,
each from the same pretrained weights and on the same batches (same tokens):

* ``full-fp32-adamw`` -- every parameter, float32 AdamW (fp32 and not bf16 because bf16 matmuls on this CPU are
  much slower than fp32 ones; on a GPU the row would be bf16);
* ``lora`` -- peft LoRA r=16 on q,k,v,o,gate,up,down, AdamW on the adapters;
* ``arbitor-bigint`` / ``arbitor-counter`` -- ``arbitor.ternarize(model, update_rule=...)`` (default group size
  rule), then ``loss.backward(); arbitor.ternary_step(model)`` (+ ``arbitor.set_rate_factor`` for the schedule).

Each row tries the same number of settings (learning rates; bigint ``strength``; counter ``counter_rate``),
picks the one with the lowest loss on B's *dev* windows and reports it on B's separate *val* windows (and A's
val windows: forgetting). Losses are nats per byte. Writes ``<out-dir>/<name>.json|md``.

    python benchmarks/finetune_quality.py --pretrain-data PATH_TO_A [--finetune-data PATH_TO_B]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _bytes_of(path) -> torch.Tensor:
    if path is None:
        from arbitor.data.text import default_corpus
        raw = default_corpus().encode("utf-8")
    else:
        raw = Path(path).read_bytes()
    return torch.tensor(list(raw), dtype=torch.int64)


class Corpus:
    """Bytes split 90/10: training windows drawn (seeded) from the first 90 %, fixed held-out windows from the
    rest (the held-out part halved into ``dev`` for choosing settings and ``val`` for reporting)."""

    def __init__(self, data: torch.Tensor, ctx: int, n_val: int):
        cut = int(len(data) * 0.9)
        self.train, held = data[:cut], data[cut:]
        half = len(held) // 2
        self.ctx = ctx
        self.dev = self._fixed(held[:half], n_val)
        self.val = self._fixed(held[half:], n_val)

    def _fixed(self, part: torch.Tensor, n: int) -> torch.Tensor:
        span = self.ctx + 1
        if len(part) < span:
            raise ValueError(f"held-out part of {len(part)} bytes is shorter than one window ({span})")
        starts = torch.linspace(0, len(part) - span, n).long()
        return torch.stack([part[s:s + span] for s in starts])

    def batches(self, n: int, batch: int, seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(self.train) - self.ctx - 1, (n, batch), generator=g)
        idx = starts[..., None] + torch.arange(self.ctx + 1)
        return list(self.train[idx])


def _loss(model, win: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=win[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), win[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, chunk: int = 16) -> float:
    was = model.training
    model.eval()
    tot = 0.0
    for i in range(0, len(windows), chunk):
        w = windows[i:i + chunk]
        tot += float(_loss(model, w)) * len(w)
    model.train(was)
    return tot / len(windows)


def _factor(i: int, n: int, warm: int) -> float:
    """Linear warmup then cosine decay to 10 %: the one schedule every row uses."""
    if i < warm:
        return (i + 1) / warm
    p = (i - warm) / max(n - warm, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))


def build(args):
    import transformers
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=args.hidden, intermediate_size=args.inter,
                                   num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                   num_key_value_heads=args.heads, max_position_embeddings=args.ctx,
                                   tie_word_embeddings=False)
    torch.manual_seed(args.seed)
    return transformers.LlamaForCausalLM(cfg)


def _linear_weights(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def pretrain(model, A: Corpus, args) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr, weight_decay=0.0, betas=(0.9, 0.95))
    batches = A.batches(args.pretrain_steps, args.pretrain_batch, args.seed)
    t0 = time.perf_counter()
    model.train()
    losses = []
    warm = max(1, args.pretrain_steps // 20)
    for i, b in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = args.pretrain_lr * _factor(i, len(batches), warm)
        loss = _loss(model, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (i + 1) % max(1, len(batches) // 10) == 0:
            print(f"pretrain step {i + 1}/{len(batches)} loss {sum(losses[-10:]) / len(losses[-10:]):.3f}",
                  flush=True)
    return {"steps": args.pretrain_steps, "batch": args.pretrain_batch, "ctx": args.ctx, "lr": args.pretrain_lr,
            "tokens": args.pretrain_steps * args.pretrain_batch * args.ctx,
            "train_loss_last10": sum(losses[-10:]) / len(losses[-10:]), "wall_s": time.perf_counter() - t0,
            "val_loss_A": evaluate(model, A.val)}


def finetune_one(base, method: str, setting: float, batches, A: Corpus, B: Corpus, args) -> dict:
    """One run: copy ``base``, set ``method`` up with ``setting``, train on ``batches``; losses and state bytes."""
    import arbitor
    model = copy.deepcopy(base)
    out = {"setting": setting}
    n_lin = _linear_weights(model)
    opt, lr = None, None
    t0 = time.perf_counter()
    if method == "full-fp32-adamw":
        lr = setting
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    elif method == "lora":
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        lr = setting
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    else:
        rule = method.split("-", 1)[1]
        kw = {"strength": setting} if rule == "bigint" else {"counter_rate": setting}
        report = arbitor.ternarize(model, update_rule=rule, **kw)
        out["group_sizes"] = sorted({r.group_size for r in report.converted})
        out["group_size_by_layer"] = {r.name.rsplit(".", 1)[-1]: r.group_size for r in report.converted}
        out["ternary_layers"] = len(report.converted)
        conv = report.converted
        out["conversion_rel_error"] = (sum(r.rel_error * r.shape[0] * r.shape[1] for r in conv)
                                       / sum(r.shape[0] * r.shape[1] for r in conv))
        out["convert_s"] = time.perf_counter() - t0
        out["val_loss_B_converted"] = evaluate(model, B.val)
    model.train()
    t0 = time.perf_counter()
    warm = max(1, len(batches) // 10)
    losses = []
    for i, b in enumerate(batches):
        f = _factor(i, len(batches), warm)
        if opt is not None:
            for g in opt.param_groups:
                g["lr"] = lr * f
        else:
            arbitor.set_rate_factor(model, f)
        loss = _loss(model, b)
        loss.backward()
        if opt is not None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            arbitor.ternary_step(model)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    out["finetune_wall_s"] = time.perf_counter() - t0
    out["train_loss_last10"] = sum(losses[-10:]) / len(losses[-10:])
    out["dev_loss_B"] = evaluate(model, B.dev)
    out["val_loss_B"] = evaluate(model, B.val)
    out["val_loss_A"] = evaluate(model, A.val)
    # training state, bytes per weight of the model's linear layers (the weights a method trains or converts)
    if method == "full-fp32-adamw":
        params = list(model.parameters())
        n_all = sum(p.numel() for p in params)
        opt_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                        if torch.is_tensor(t) and t.dim() > 0)
        total = sum(p.numel() * p.element_size() for p in params) * 2 + opt_bytes      # weights + grads + m, v
        out["state_bytes_per_weight"] = total / n_all
        out["state_note"] = "fp32 weight 4 + grad 4 + AdamW m, v 8 per parameter"
    elif method == "lora":
        train_p = [p for p in model.parameters() if p.requires_grad]
        n_ad = sum(p.numel() for p in train_p)
        opt_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                        if torch.is_tensor(t) and t.dim() > 0)
        total = n_lin * 4 + n_ad * 8 + opt_bytes                # frozen fp32 base + adapter weights/grads + m, v
        out["state_bytes_per_weight"] = total / n_lin
        out["adapter_params"] = n_ad
        out["state_note"] = (f"frozen fp32 base 4/weight + {n_ad:,} adapter params x 16 B over {n_lin:,} "
                             "linear weights")
    else:
        audit = arbitor.ternary_audit(model)
        out["state_bytes_per_weight"] = audit["state_bytes_per_weight"]
        out["state_bytes"] = audit["state_bytes"]
        out["trainable_float_params"] = audit["trainable_float_params"]
        out["state_note"] = "ternary_audit: integer state (T_packed, E, corr_accum, rule state) per ternary weight"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-data", required=True, help="corpus A (text file, read as bytes)")
    p.add_argument("--finetune-data", default=None, help="corpus B (default: arbitor.data.default_corpus())")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results" / "finetune"))
    p.add_argument("--name", default="cpu-quality")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--inter", type=int, default=384)
    p.add_argument("--ctx", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pretrain-steps", type=int, default=250)
    p.add_argument("--pretrain-batch", type=int, default=16)
    p.add_argument("--pretrain-lr", type=float, default=4e-3)
    p.add_argument("--ft-steps", type=int, default=64)
    p.add_argument("--ft-batch", type=int, default=8)
    p.add_argument("--val-windows", type=int, default=32)
    p.add_argument("--full-lrs", default="3e-4,1e-3,3e-3")
    p.add_argument("--lora-lrs", default="1e-3,3e-3,1e-2")
    p.add_argument("--bigint-strengths", default="4,16,20",
                   help="ternarize(strength=...), at most 20; bigint has no step size")
    p.add_argument("--counter-rates", default="0.5,1.0,2.0", help="ternarize(counter_rate=...)")
    p.add_argument("--methods", default="full-fp32-adamw,lora,arbitor-bigint,arbitor-counter")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    A = Corpus(_bytes_of(args.pretrain_data), args.ctx, args.val_windows)
    B = Corpus(_bytes_of(args.finetune_data), args.ctx, args.val_windows)
    model = build(args)
    pre = pretrain(model, A, args)
    pre["val_loss_B"] = evaluate(model, B.val)
    pre["dev_loss_B"] = evaluate(model, B.dev)
    pre["params"] = sum(q.numel() for q in model.parameters())
    pre["linear_weights"] = _linear_weights(model)
    print("pretrained:", {k: round(v, 4) if isinstance(v, float) else v for k, v in pre.items()}, flush=True)
    batches = B.batches(args.ft_steps, args.ft_batch, args.seed + 1)
    grids = {"full-fp32-adamw": ("lr", args.full_lrs), "lora": ("lr", args.lora_lrs),
             "arbitor-bigint": ("strength", args.bigint_strengths),
             "arbitor-counter": ("counter_rate", args.counter_rates)}
    rows = []
    for method in args.methods.split(","):
        knob, grid = grids[method]
        tries = []
        for s in (float(x) for x in grid.split(",")):
            r = finetune_one(model, method, s, batches, A, B, args)
            print(method, knob, s, {k: round(v, 4) for k, v in r.items() if isinstance(v, float)}, flush=True)
            tries.append(r)
        ok = [t for t in tries if math.isfinite(t["dev_loss_B"])] or tries
        best = min(ok, key=lambda t: t["dev_loss_B"])
        row = {"method": method, "knob": knob, "tried": [{"setting": t["setting"], "dev_loss_B": t["dev_loss_B"],
                                                          "val_loss_B": t["val_loss_B"]} for t in tries],
               "chosen": best["setting"], "val_loss_B_float": pre["val_loss_B"],
               "val_loss_A_float": pre["val_loss_A"],
               "tuning_wall_s": sum(t["finetune_wall_s"] for t in tries)}
        row.update({k: v for k, v in best.items() if k != "setting"})
        rows.append(row)
    doc = {"device": f"cpu ({platform.processor() or platform.machine()}, {args.threads} threads)",
           "command": "python benchmarks/finetune_quality.py " + " ".join(shlex.quote(a) for a in
                                                                         (argv if argv is not None else sys.argv[1:])),
           "torch": torch.__version__, "config": {k: getattr(args, k) for k in ("hidden", "layers", "heads", "inter",
                                                                              "ctx", "seed")},
           "finetune": {"steps": args.ft_steps, "batch": args.ft_batch, "ctx": args.ctx,
                        "tokens": args.ft_steps * args.ft_batch * args.ctx, "val_windows": args.val_windows,
                        "finetune_data": args.finetune_data or "arbitor.data.default_corpus() (stdlib docstrings)",
                        "pretrain_data": Path(args.pretrain_data).name},
           "pretrain": pre, "rows": rows, "total_wall_s": time.perf_counter() - t_all}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=1))
    (out / f"{args.name}.md").write_text(render(doc))
    print(render(doc))
    return 0


def _f(v, fmt=".3f"):
    return "-" if v is None else format(v, fmt)


def table(doc) -> list[str]:
    lines = ["| method | chosen setting | B val: float | B val: right after conversion | B val: after fine-tune | "
             "A val: after (float before) | state B/weight | fine-tune wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        lines.append(f"| {r['method']} | {r['knob']}={r['chosen']:g} | {_f(r['val_loss_B_float'])} | "
                     f"{_f(r.get('val_loss_B_converted'))} | {_f(r['val_loss_B'])} | {_f(r['val_loss_A'])} "
                     f"({_f(r['val_loss_A_float'])}) | {_f(r['state_bytes_per_weight'], '.2f')} | "
                     f"{r['finetune_wall_s']:.0f} |")
    return lines


def render(doc) -> str:
    pre, ft, c = doc["pretrain"], doc["finetune"], doc["config"]
    lines = [f"# Fine-tune quality ({doc['device']})", "", f"Command: `{doc['command']}`", "",
             f"Model: transformers `LlamaForCausalLM`, byte vocab 256, hidden {c['hidden']}, {c['layers']} layers, "
             f"{c['heads']} heads, intermediate {c['inter']}, ctx {c['ctx']}, untied head ({pre['params']:,} "
             f"parameters, {pre['linear_weights']:,} in linear layers). Pretrained float32 AdamW on "
             f"`{ft['pretrain_data']}` (A): {pre['steps']} steps x {pre['batch']} x {pre['ctx']} bytes, val loss A "
             f"{pre['val_loss_A']:.3f} nats/byte ({pre['wall_s']:.0f} s). Fine-tuned on {ft['finetune_data']} (B): "
             f"{ft['steps']} steps x {ft['batch']} x {ft['ctx']} = {ft['tokens']:,} bytes, the same batches for every "
             f"row; settings chosen on B's dev windows, losses below on B's separate val windows "
             f"({ft['val_windows']} x {ft['ctx']} each). Nats/byte.", ""]
    lines += table(doc)
    lines += ["", "Settings tried (B dev loss / B val loss):", ""]
    for r in doc["rows"]:
        tried = ", ".join(f"{r['knob']}={t['setting']:g}: {t['dev_loss_B']:.3f} / {t['val_loss_B']:.3f}"
                          for t in r["tried"])
        lines.append(f"* {r['method']}: {tried}")
    groups = {r["method"]: r.get("group_size_by_layer") for r in doc["rows"] if r.get("group_size_by_layer")}
    if groups:
        g = next(iter(groups.values()))
        lines += ["", "Group sizes from the default rule (`group_size=64` when it divides in_features, else the "
                  "largest power of two below it that does): " + ", ".join(f"{k} {v}" for k, v in g.items()) + "."]
    by = {r["method"]: r for r in doc["rows"]}
    reading = []
    for m in ("arbitor-bigint", "arbitor-counter"):
        if m not in by:
            continue
        r = by[m]
        cmp = ", ".join(f"{r['val_loss_B'] - by[o]['val_loss_B']:+.3f} against {o}" for o in ("lora", "full-fp32-adamw")
                        if o in by)
        reading.append(f"* {m}: conversion costs {r['val_loss_B_converted'] - r['val_loss_B_float']:+.3f} on B "
                       f"(weighted relative weight error {r['conversion_rel_error']:.3f}); after fine-tuning B val "
                       f"{r['val_loss_B']:.3f} ({cmp}); A val {r['val_loss_A'] - r['val_loss_A_float']:+.3f} "
                       f"(forgetting); {r['state_bytes_per_weight']:.2f} B/weight of training state.")
    edge = [r["method"] for r in doc["rows"] if r["tried"] and r["chosen"] == r["tried"][-1]["setting"]]
    if edge:
        reading.append("* chosen at the top of its grid (a larger value might do better): " + ", ".join(edge) + ".")
    reading.append("* One seed, one small model, a short fine-tune: differences of a few hundredths are within noise. "
                   "The float row is fp32 because bf16 matmuls are slow on this CPU.")
    lines += ["", "Reading (computed from the numbers above):", ""] + reading
    lines += ["", f"Total wall time {doc['total_wall_s']:.0f} s. Fine-tune wall times are of the chosen setting's "
              "training loop on a CPU shared with other processes: they vary several-fold from run to run "
              "(compare them only within one row's tries)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

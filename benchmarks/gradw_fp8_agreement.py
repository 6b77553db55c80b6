"""How far the fp8 ``grad_W`` (``TernaryConfig.gradw_fp8``, ``arbitor/ternary/ops/fp8.py``) is from the exact one,
on a real model's ballots.

Usage (CUDA machine, sm_89+)::

    PYTHONPATH=. python benchmarks/gradw_fp8_agreement.py DATA.txt [--rule counter] [--steps 600]
        [--at 0,200,600] [--model nanogpt|3b] [--out-dir benchmarks/results/speed/h200-gradw-fp8]

Trains arbitor's model with the rule's default settings of ``bench_speed.py`` and exact ``grad_W`` (bf16, eager,
character vocabulary of DATA): ``--model nanogpt`` at nanoGPT's ``shakespeare_char`` shape (6 x 384, ctx 256,
batch 64, drawn by the seeded CPU init); ``--model 3b`` the ``3b`` preset (block checkpointing as it ships) at
batch 8 x ctx 512, its weights drawn at random on the GPU as in ``bench_speed.py`` (the seeded CPU init of 3 B
weights takes minutes). At each step of ``--at`` it takes one batch's ballot inputs ``(x, grad_y)`` of every
ternary layer (module hooks) and forms that layer's ``grad_W = grad_y.T @ x`` three ways: float32 (the
reference), bf16 cuBLAS (the GPU path without the setting) and fp8 (``gradw.gradw_chunks`` with ``fp8=True``, the
path with it). Per step, over the layers measured (counts summed) -- ``nanogpt``: every layer with an fp8 path
(``fp8_shape_ok``; the readout, 65 rows, has none), although ``fp8_pays`` gives none of them fp8 in training;
``3b``: the layers that use it (``fp8_pays``: the MLP's 3072 x 12288 and 12288 x 3072):

* ``sign_agree``: entries whose sign equals the float32 ``grad_W``'s;
* ``vote_equal``: group votes (``votes.group_votes`` with the layer's trits) equal to the float32 ones, and
  ``vote_abs_diff``: the mean ``|vote - vote_fp32|`` (a vote is a sum of at most ``group_size`` signs);
* ``rel_err``: ``||grad_W - grad_W_fp32|| / ||grad_W_fp32||`` over all entries.

Writes ``gradw_fp8_agreement_<rule>.json`` and ``.md`` (``--model 3b``: ``gradw_fp8_agreement_3b_<rule>``) in
``--out-dir``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_speed import NANOGPT, RULES  # noqa: E402


def _batches(ids: torch.Tensor, device: torch.device, batch: int, ctx: int, seed: int):
    """Endless random windows ``[batch, ctx + 1]`` of the token ids ``ids``, seeded."""
    g = torch.Generator().manual_seed(seed)
    offs = torch.arange(ctx + 1)
    while True:
        starts = torch.randint(0, len(ids) - ctx - 1, (batch,), generator=g)
        yield ids[starts[:, None] + offs].to(device)


def _capture(model, idx):
    """``{name: (x [M, K], grad_y [M, N], layer, T_packed at the forward)}`` of one training forward + backward
    (whose ballots count as the step's, like any other)."""
    from arbitor.ternary.layer import TernaryScaleTensor
    seen, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, TernaryScaleTensor):
            def fwd(m, inp, out, name=name):
                seen[name] = [inp[0].detach().reshape(-1, m.in_features), None, m, m.T_packed.clone()]

            def bwd(m, gin, gout, name=name):
                seen[name][1] = gout[0].detach().reshape(-1, m.out_features)
            hooks += [mod.register_forward_hook(fwd), mod.register_full_backward_hook(bwd)]
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    for h in hooks:
        h.remove()
    return {k: v for k, v in seen.items() if v[1] is not None}


def _measure(captured, used_only: bool = False) -> dict:
    """The module doc's counts over ``captured``; ``used_only``: only the layers ``fp8_pays`` gives fp8."""
    from arbitor.ternary.format import unpack_ternary
    from arbitor.ternary.ops.fp8 import fp8_pays, fp8_shape_ok
    from arbitor.ternary.ops.gradw import gradw_chunks
    from arbitor.ternary.ops.votes import group_votes
    tot = {"entries": 0, "groups": 0, "layers": 0}
    sums = {k: 0.0 for k in ("sign_bf16", "sign_fp8", "vote_eq_bf16", "vote_eq_fp8", "vote_diff_bf16",
                             "vote_diff_fp8", "err2_bf16", "err2_fp8", "ref2")}
    for name, (x, gy, layer, T_packed) in captured.items():
        if not (fp8_pays if used_only else fp8_shape_ok)(layer.out_features, layer.in_features):
            continue
        ref = gy.float().t() @ x.float()
        bf = (gy.t() @ x).float()
        flag = torch.zeros((), dtype=torch.int32, device=x.device)
        fp8 = torch.cat([c for _, c in gradw_chunks(gy, x, layer.out_features, True, flag)]).float()
        t = unpack_ternary(T_packed, layer.in_features)
        v_ref = group_votes(ref, t, layer.group_size)
        for key, gw in (("bf16", bf), ("fp8", fp8)):
            sums[f"sign_{key}"] += float((torch.sign(gw) == torch.sign(ref)).sum())
            v = group_votes(gw, t, layer.group_size)
            sums[f"vote_eq_{key}"] += float((v == v_ref).sum())
            sums[f"vote_diff_{key}"] += float((v - v_ref).abs().sum())
            sums[f"err2_{key}"] += float((gw - ref).pow(2).sum())
        sums["ref2"] += float(ref.pow(2).sum())
        tot["entries"] += ref.numel()
        tot["groups"] += v_ref.numel()
        tot["layers"] += 1
    if not tot["layers"]:
        raise SystemExit("gradw_fp8_agreement.py: no layer of this model has an fp8 path to measure")
    out = dict(tot)
    for key in ("bf16", "fp8"):
        out[key] = {"sign_agree": sums[f"sign_{key}"] / tot["entries"],
                    "vote_equal": sums[f"vote_eq_{key}"] / tot["groups"],
                    "vote_abs_diff": sums[f"vote_diff_{key}"] / tot["groups"],
                    "rel_err": (sums[f"err2_{key}"] / sums["ref2"]) ** 0.5}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="UTF-8 text file (e.g. tinyshakespeare.txt)")
    ap.add_argument("--rule", default="counter", choices=("bigint", "counter"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--at", default="0,200,600", help="comma list of steps at which to measure")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="nanogpt", choices=("nanogpt", "3b"))
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results" / "speed" / "h200-gradw-fp8"))
    args = ap.parse_args(argv)
    try:
        at = sorted({int(s) for s in args.at.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--at: expected a comma list of integers, got {args.at!r}")
    if not torch.cuda.is_available():
        print("gradw_fp8_agreement.py needs a CUDA device", file=sys.stderr)
        return 2
    path = Path(args.data)
    if not path.is_file():
        ap.error(f"data file {path} does not exist")
    from arbitor.data.text import CharVocab
    from arbitor.model.config import preset
    from arbitor.model.text import ArbitorLM
    from arbitor.ternary.step import ternary_step
    device = torch.device("cuda")
    text = path.read_text(encoding="utf-8")
    big = args.model == "3b"
    chars = CharVocab(text)
    vocab = chars.vocab_size
    batches = _batches(chars.encode(text), device, 8 if big else 64, 512 if big else NANOGPT["max_ctx"], args.seed)
    first = next(batches)
    if big:
        from benchmarks.bench_speed import _build
        model = _build(preset("3b", ternary=RULES[args.rule], vocab_size=vocab, seed=args.seed), device)
    else:
        cfg = preset("small", ternary=RULES[args.rule], **dict(NANOGPT, vocab_size=vocab), compute_dtype="bfloat16",
                     seed=args.seed)
        model = ArbitorLM(cfg).to(device).train()
    rows, t0, step = [], time.time(), 0
    idx = first
    while step <= max(at):
        if step in at:      # this step's own forward and backward, measured
            rows.append({"step": step, **_measure(_capture(model, idx), used_only=big)})
            print(json.dumps(rows[-1]), flush=True)
        else:
            _, loss = model(idx[:, :-1], idx[:, 1:])
            loss.backward()
        ternary_step(model)
        idx = next(batches)
        step += 1
    res = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "rule": args.rule,
           "model": args.model,
           "command": "PYTHONPATH=. python benchmarks/gradw_fp8_agreement.py " + " ".join(
               argv if argv is not None else sys.argv[1:]), "seconds": round(time.time() - t0, 1), "rows": rows}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"gradw_fp8_agreement_{'3b_' if big else ''}{args.rule}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    lines = [f"# fp8 grad_W against float32, {args.model} model, {args.rule} rule ({res['device']})", "",
             f"Command: `{res['command']}`",
             "", "| step | layers | form | sign agreement | votes equal | mean abs vote diff | rel. error |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        for key in ("bf16", "fp8"):
            m = r[key]
            lines.append(f"| {r['step']} | {r['layers']} | {key} | {m['sign_agree']:.4f} | {m['vote_equal']:.4f} | "
                         f"{m['vote_abs_diff']:.3f} | {m['rel_err']:.4f} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

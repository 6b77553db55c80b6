"""Greedy tokens and logits of the ``3b`` token step, eager against compiled (both without CUDA graphs), batch 1,
the bench_decode models (random weights drawn on the GPU, ``for_inference``, unfused and with fused projections)
and prompt (seed 0, 512 tokens); then the compiled + graphed decoder's tokens/s and tokens.

    PYTHONPATH=. python benchmarks/results/inference/h200-decode-compiled-vs-eager/diag_tokens.py [--no-emulate]

Written after ``bench_decode.py --parts attention,decode`` (``bench-decode-before-emulate.md``, 2026-11-30) found
the compiled paths' greedy tokens equal to the eager path's for only 4 of 9 tokens at batch 1. ``--no-emulate``
compiles without ``GraphedDecoder``'s ``COMPILE_OPTIONS`` (Inductor's ``emulate_precision_casts``), as the decoder
did before.
"""
import argparse
import copy
import sys
import time

import torch

sys.path.insert(0, '.')
from arbitor import for_inference  # noqa: E402
from arbitor.model import decode  # noqa: E402
from arbitor.model.config import preset  # noqa: E402
from arbitor.model.decode import GraphedDecoder  # noqa: E402
from benchmarks.bench_decode import _graphed_tps  # noqa: E402
from benchmarks.bench_speed import _build  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--no-emulate", action="store_true")
args = ap.parse_args()
if args.no_emulate:
    decode.COMPILE_OPTIONS = {}
print("COMPILE_OPTIONS", decode.COMPILE_OPTIONS, flush=True)
dev = torch.device('cuda')
torch.set_grad_enabled(False)
cfg = preset('3b', linear='ternary', compute_dtype='bfloat16', max_ctx=512 + 64, activation_checkpointing=False)
base = for_inference(_build(cfg, dev).eval())
models = {"ternary": base, "ternary-fused": for_inference(copy.deepcopy(base), fuse_projections=True)}
idx = torch.randint(0, cfg.vocab_size, (1, 512), generator=torch.Generator().manual_seed(0)).to(dev)


def run(m, compile, n=9):
    dec = GraphedDecoder(m, 1, 512 + 64, cuda_graph=False, compile=compile)
    dec.cache.reset()
    lg = [dec._step(idx).clone()]
    nxt = lg[-1].argmax(-1, keepdim=True)
    toks = [nxt]
    for _ in range(n - 1):
        lg.append(dec.next_logits(nxt).clone())
        nxt = lg[-1].argmax(-1, keepdim=True)
        toks.append(nxt)
    return torch.cat(toks, 1), lg


def report(tag, a, b):
    (ta, la), (tb, lb) = a, b
    same = (ta == tb)[0]
    lead = int(same.long().cumprod(0).sum())
    print(f"{tag}: {lead}/{same.numel()} leading tokens equal; eager {ta[0].tolist()} other {tb[0].tolist()}")
    for i in range(min(lead + 1, len(la))):
        top = la[i][0].topk(2).values
        print(f"  step {i}: max |logit diff| {(la[i] - lb[i]).abs().max().item():.4g}, eager top1-top2 margin "
              f"{float(top[0] - top[1]):.4g}, logit scale {la[i].abs().max().item():.3g}", flush=True)


for name, m in models.items():
    e = run(m, False)
    t = time.time()
    c = run(m, True)
    print(f"{name}: compiled in {time.time() - t:.0f} s", flush=True)
    report(f"{name} eager vs compiled", e, c)
    tps, out, _ = _graphed_tps(m, 1, 512, 64, 3, dev, compile=True)      # bench_decode's measurement, same prompt
    same = (out[0, 512:521] == e[0][0]).long().cumprod(0).sum()
    print(f"{name}: compiled + graphed {tps:.1f} tokens/s; {int(same)}/9 leading tokens equal to eager", flush=True)
    torch._dynamo.reset()

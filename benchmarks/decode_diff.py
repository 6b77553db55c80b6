"""Where does a graphed decode step differ from the eager one? A diagnostic for the GPU.

Builds a frozen (``arbitor.for_inference``) model of a preset with random weights, runs the prompt, then one
token step three ways from the same cache state: eagerly twice, and as a captured CUDA graph replayed twice.
Every module's output (and every SDPA call's, in call order) is recorded -- a clone, so that a captured graph
rewrites it on each replay -- and the first modules whose outputs differ are printed for each pair:

    eager vs eager   (is the eager step itself deterministic?)
    graph vs graph   (is the replay?)
    eager vs graph

A module called several times in a step (a block's norm) keeps its last output. On 2026-11-30 this found the
batch-16 ``3b`` token mismatch of ``bench_decode.py``: the eager step was not deterministic, first in an SDPA
call (cuDNN's attention), which is why decoding now attends through ``model.attention.cached_attention``
(``benchmarks/results/inference/h200-decode-diff-cudnn.log``).

    PYTHONPATH=. python benchmarks/decode_diff.py --preset 3b --batch 16
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="3b")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--show", type=int, default=12, help="differing modules printed per pair")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("decode_diff.py: needs a CUDA device", file=sys.stderr)
        return 2
    from arbitor import for_inference
    from arbitor.model.config import preset
    from arbitor.model.decode import GraphedDecoder
    from benchmarks.bench_speed import _build

    torch.set_grad_enabled(False)
    cfg = preset(args.preset, linear="ternary", compute_dtype="bfloat16", max_ctx=args.prompt + 16,
                 activation_checkpointing=False)
    m = for_inference(_build(cfg, torch.device("cuda")).eval())
    idx = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    dec = GraphedDecoder(m, args.batch, args.prompt + 8, cuda_graph=True)
    rec: dict[str, torch.Tensor] = {}
    order: list[str] = []
    on = [False]
    names = {mod: n for n, mod in m.named_modules()}

    def keep(name: str, out: torch.Tensor) -> None:
        if name not in rec:
            order.append(name)
        rec[name] = out.detach().clone()

    def hook(mod, inp, out):
        if on[0] and isinstance(out, torch.Tensor):
            keep(names[mod], out)
    for mod in m.modules():
        mod.register_forward_hook(hook)
    real_sdpa, calls = F.scaled_dot_product_attention, [0]

    def sdpa(*a, **k):
        out = real_sdpa(*a, **k)
        if on[0]:
            keep(f"sdpa{calls[0]}", out)
            calls[0] += 1
        return out
    F.scaled_dot_product_attention = sdpa

    c = dec.cache     # a step run and undone: StaticKVCache.position / set_position

    def recording(fn):
        rec.clear()
        calls[0] = 0
        on[0] = True
        try:
            return fn()
        finally:
            on[0] = False

    c.reset()
    tok = dec._step(idx.cuda()).argmax(-1, keepdim=True)
    tok = dec._step(tok).argmax(-1, keepdim=True)          # one eager token step first (warm-up)
    state = c.position()
    runs = {}
    for rep in range(2):
        c.set_position(state)
        logits = recording(lambda: dec._step(tok).clone())
        runs[f"eager{rep}"] = (dict(rec), logits)
    c.set_position(state)
    dec.tok.copy_(tok)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        dec._step(dec.tok)
    torch.cuda.current_stream().wait_stream(side)
    c.set_position(state)
    recording(dec._capture)                               # the clones become outputs of the graph
    captured = dict(rec)
    for rep in range(2):
        c.set_position(state)
        dec.graph.replay()
        torch.cuda.synchronize()
        runs[f"graph{rep}"] = ({k: v.clone() for k, v in captured.items()}, dec.logits.clone())

    for a, b, label in (("eager0", "eager1", "eager vs eager"), ("graph0", "graph1", "graph vs graph"),
                        ("eager0", "graph0", "eager vs graph")):
        (ra, la), (rb, lb) = runs[a], runs[b]
        diffs = [(n, (ra[n].float() - rb[n].float()).abs().max().item(), tuple(ra[n].shape)) for n in order
                 if n in ra and n in rb and ra[n].shape == rb[n].shape and not torch.equal(ra[n], rb[n])]
        print(f"{label}: logits max diff {(la - lb).abs().max().item():.3g}, argmax equal "
              f"{bool((la.argmax(-1) == lb.argmax(-1)).all())}; {len(diffs)} of {len(order)} outputs differ"
              + ("; first:" if diffs else ""), flush=True)
        for n, d, shape in diffs[:args.show]:
            print(f"   {n} {shape} {d:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

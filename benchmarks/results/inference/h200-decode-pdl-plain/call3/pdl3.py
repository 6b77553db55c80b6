"""Probe 2: where do the PDL variants' tokens differ from the plain step's? chain outputs; 3b variants."""
import json, os, time
import torch
from arbitor.ternary.ops import decode_tc
from arbitor.model import decode_attention
from arbitor.ternary.ops.decode_triton import decode_forward

OUT = os.environ.get("OUT", ".")
dev = torch.device("cuda")
res = {"device": torch.cuda.get_device_name(), "chain": {}, "decode": {}}


def save():
    with open(os.path.join(OUT, "pdl3.json"), "w") as f:
        json.dump(res, f, indent=1)


def set_mode(k, a, x=".nc"):
    decode_tc.PDL_MODE, decode_attention.PDL_MODE = k, a
    if decode_tc.X_LOAD_PDL != x:
        decode_tc.X_LOAD_PDL = x
        decode_tc.tc_gemv_asm.cache_clear()


GS = 64
shifts = torch.tensor([0, 2, 4, 6], device=dev, dtype=torch.uint8)


def layer(N, K):
    codes = torch.randint(0, 3, (N, K // 4, 4), device=dev, dtype=torch.uint8)
    T = (codes << shifts).sum(-1, dtype=torch.uint8).contiguous()
    S = torch.exp2(torch.randint(-14, -11, (N, K // GS), device=dev).float() + torch.rand(N, K // GS, device=dev))
    return K, T, S


# a dependent chain: each GEMV's output (normalised by a torch op) feeds the next; 22 blocks of the 3b shapes
SH = [(12288, 3072), (3072, 12288), (12288, 3072), (3072, 12288)]
layers = [layer(N, K) for _ in range(10) for N, K in SH]
x0 = torch.randn(1, 3072, device=dev, dtype=torch.bfloat16)
outs = []


def chain(relu=False):
    outs.clear()
    x = x0
    for i, (K, T, S) in enumerate(layers):
        y = decode_forward(x, T, S, K, GS, relu_square=relu and i % 2 == 0)
        outs.append(y)
        x = y if i % 2 == 0 else (y * 0.5 + x0)
    return x


def graph_run(body):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        body()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        body()
    results = []
    for _ in range(20):
        g.replay()
        torch.cuda.synchronize()
        results.append(torch.cat([o.float().reshape(-1) for o in outs]).clone())
    return results


for relu in (False, True):
    set_mode(0, 0)
    ref = graph_run(lambda: chain(relu))[0]
    for k, x in ((1, ".nc"), (2, ".nc"), (1, ""), (1, ".cg")):
        set_mode(k, 0, x)
        rs = graph_run(lambda: chain(relu))
        key = f"relu{int(relu)} mode{k} x'{x}'"
        res["chain"][key] = [bool(torch.equal(ref, r)) for r in rs].count(True)
        print("chain", key, res["chain"][key], "of 20 equal", flush=True)
set_mode(0, 0)
del layers
save()

from arbitor import for_inference
from arbitor.model.config import preset
from arbitor.model.decode import GraphedDecoder
from benchmarks.bench_speed import _build
from benchmarks.bench_decode import _graphed_tps, prompt_ids
cfg = preset("3b", linear="ternary", compute_dtype="bfloat16", max_ctx=576, activation_checkpointing=False)
m = for_inference(for_inference(_build(cfg, dev).eval()), fuse_projections=True)
PDL = {"triton.enable_pdl": True}
idx = prompt_ids(m, 1, 512, dev)


def first_diff(a, b):
    d = (a != b)[0, 512:].nonzero()
    return int(d[0]) if len(d) else None


ref = None
for name, k, a, x, mode in [("ref compile+graph", 0, 0, ".nc", "cg"), ("eager k0", 0, 0, ".nc", "eager"),
                            ("eager k1a1", 1, 1, ".nc", "eager"), ("graph k1a1", 1, 1, ".nc", "graph"),
                            ("graph k0", 0, 0, ".nc", "graph"),
                            ("cg k1a0", 1, 0, ".nc", "cg"), ("cg k0a1", 0, 1, ".nc", "cg"),
                            ("cg k1a1", 1, 1, ".nc", "cg"), ("cg k1a1 x=''", 1, 1, "", "cg"),
                            ("cg k1a1 x=.cg", 1, 1, ".cg", "cg"), ("cg k2a2 x=.cg", 2, 2, ".cg", "cg"),
                            ("cg k1a1 again", 1, 1, ".nc", "cg")]:
    set_mode(k, a, x)
    t0 = time.time()
    try:
        if mode == "eager":
            out = GraphedDecoder(m, 1, 576, cuda_graph=False).generate(idx, 64, temperature=0)
            tps = None
        else:
            tps, out, _ = _graphed_tps(m, 1, 512, 64, 5, dev, compile=mode == "cg",
                                       compile_options=PDL if mode == "cg" else None)
        if ref is None:
            ref = out
        res["decode"][name] = {"tps": tps, "first_diff_vs_ref": first_diff(ref, out)}
        res.setdefault("tokens", {})[name] = out[0, 512:].tolist()
    except Exception as exc:
        import traceback; traceback.print_exc()
        res["decode"][name] = repr(exc)[:300]
    print(name, res["decode"][name], f"{time.time() - t0:.0f}s", flush=True)
    save()
set_mode(0, 0)
save()

"""Probe: plain programmatic dependent launch in decode_tc and the decode attention (weights loaded before the
wait, trigger after the K loop (1) or at the start (2)); GEMV equality, a 110-GEMV chain, the 3b decode at b1."""
import json, os, sys, time
import torch
from arbitor.ternary.ops import decode_tc
from arbitor.model import decode_attention
from arbitor.ternary.ops.decode_triton import decode_forward

OUT = os.environ.get("OUT", ".")
dev = torch.device("cuda")
res = {"device": torch.cuda.get_device_name(), "equal": {}, "chain_us": {}, "decode": {}, "profile": {}}


def save():
    with open(os.path.join(OUT, "pdl2.json"), "w") as f:
        json.dump(res, f, indent=1)


def set_mode(k, a=None):
    decode_tc.PDL_MODE = k
    decode_attention.PDL_MODE = k if a is None else a


GS = 64
shifts = torch.tensor([0, 2, 4, 6], device=dev, dtype=torch.uint8)


def layer(N, K):
    codes = torch.randint(0, 3, (N, K // 4, 4), device=dev, dtype=torch.uint8)
    T = (codes << shifts).sum(-1, dtype=torch.uint8).contiguous()
    S = torch.exp2(torch.randint(-8, -5, (N, K // GS), device=dev).float() + torch.rand(N, K // GS, device=dev))
    return K, T, S


# 1. equality
for N, K in [(12288, 3072), (3072, 3072), (3072, 6144), (3072, 12288), (4096, 4096), (8192, 8192), (300, 512)]:
    _, T, S = layer(N, K)
    for M in (1, 4, 16):
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        ys = []
        for mode in (0, 1, 2):
            set_mode(mode)
            ys.append(decode_forward(x, T, S, K, GS))
        torch.cuda.synchronize()
        res["equal"][f"{N}x{K} M{M}"] = [bool(torch.equal(ys[0], y)) for y in ys[1:]]
set_mode(0)
print("equal:", res["equal"], flush=True)
save()

# 2. chain of the 3b block's five GEMVs x 22 (distinct weights), one CUDA graph
SH = [(12288, 3072), (3072, 3072), (3072, 6144), (12288, 3072), (3072, 12288)]
layers = [layer(N, K) for _ in range(22) for N, K in SH]
xs = {K: torch.randn(1, K, device=dev, dtype=torch.bfloat16) for K in (3072, 6144, 12288)}


def chain():
    for K, T, S in layers:
        decode_forward(xs[K], T, S, K, GS)


def graph_us(body, reps=30):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        body(); body()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        body()
    g.replay(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(reps):
        a.record(); g.replay(); b.record(); b.synchronize()
        ts.append(a.elapsed_time(b) * 1000)
    ts.sort()
    return ts[len(ts) // 2]


for mode in (0, 1, 2, 0):
    set_mode(mode)
    us = graph_us(chain)
    res["chain_us"].setdefault(str(mode), []).append(us)
    print(f"chain mode {mode}: {us:.1f} us ({us / len(layers):.2f} a GEMV)", flush=True)
set_mode(0)
del layers
save()

# 3. 3b decode at batch 1
from arbitor import for_inference
from arbitor.model.config import preset
from benchmarks.bench_speed import _build
from benchmarks.bench_decode import _graphed_tps
models = {}
for linear in ("ternary", "dense"):
    cfg = preset("3b", linear=linear, compute_dtype="bfloat16", max_ctx=576, activation_checkpointing=False)
    m = _build(cfg, dev).eval()
    if linear == "ternary":
        m = for_inference(m)
    models[linear] = for_inference(m, fuse_projections=True)
    print("built", linear, flush=True)
PDL = {"triton.enable_pdl": True}
variants = [("ternary", 0, 0, False), ("ternary", 0, 0, True), ("ternary", 1, 1, True), ("ternary", 2, 2, True),
            ("ternary", 1, 1, False), ("ternary", 2, 1, True), ("dense", 0, 0, True), ("dense", 0, 0, False),
            ("ternary", 0, 0, True), ("ternary", 1, 1, True)]
outs = {}
for i, (side, km, am, ip) in enumerate(variants):
    set_mode(km, am)
    key = f"{side} kernel{km} attn{am} inductor_pdl{int(ip)} #{i}"
    t0 = time.time()
    try:
        prof = i in (1, 2)
        tps, out, table = _graphed_tps(models[side], 1, 512, 64, 5, dev, compile=True, profile=prof,
                                       compile_options=PDL if ip else None)
        res["decode"][key] = tps
        if table is not None:
            res["profile"][key] = table
        outs[key] = out
        if side == "ternary":
            ref = next(v for k, v in outs.items() if k.startswith("ternary"))
            res.setdefault("tokens_equal_first", {})[key] = bool(torch.equal(ref, out))
    except Exception as exc:
        import traceback; traceback.print_exc()
        res["decode"][key] = repr(exc)[:300]
    print(f"{key}: {res['decode'][key]} ({time.time() - t0:.0f}s)", flush=True)
    save()
set_mode(0)
save()

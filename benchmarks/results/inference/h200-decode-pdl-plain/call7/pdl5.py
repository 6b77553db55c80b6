"""Probe: under a dependent launch, weights and scales by plain ld.global too (not .nc): any cost?"""
import json, os, time
import torch
from arbitor.ternary.ops import decode_tc
from arbitor.ternary.ops.decode_triton import decode_forward
OUT = os.environ.get("OUT", ".")
dev = torch.device("cuda")
res = {"device": torch.cuda.get_device_name(), "chain_us": {}, "decode": {}}
orig = decode_tc.TcTile.asm


def set_plain(on):
    def asm(self, gs, tokens, f16, pdl=False):
        a = orig(self, gs, tokens, f16, pdl)
        return a.replace("ld.global.nc", "ld.global") if (pdl and on) else a
    decode_tc.TcTile.asm = asm


shifts = torch.tensor([0, 2, 4, 6], device=dev, dtype=torch.uint8)
SH = [(12288, 3072), (3072, 3072), (3072, 6144), (12288, 3072), (3072, 12288)]
layers = []
for _ in range(22):
    for N, K in SH:
        codes = torch.randint(0, 3, (N, K // 4, 4), device=dev, dtype=torch.uint8)
        layers.append((K, (codes << shifts).sum(-1, dtype=torch.uint8).contiguous(),
                       torch.rand(N, K // 64, device=dev) * 0.01))
xs = {K: torch.randn(1, K, device=dev, dtype=torch.bfloat16) for K in (3072, 6144, 12288)}
outs = []


def chain():
    outs.clear()
    for K, T, S in layers:
        outs.append(decode_forward(xs[K], T, S, K, 64))


def graph_us(reps=30):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        chain(); chain()
    torch.cuda.current_stream().wait_stream(s); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        chain()
    g.replay(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(reps):
        a.record(); g.replay(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b) * 1000)
    ts.sort()
    return ts[len(ts) // 2], torch.cat([o.float().reshape(-1) for o in outs])


ref = None
for plain in (False, True, False, True):
    set_plain(plain)
    us, y = graph_us()
    ref = y if ref is None else ref
    res["chain_us"].setdefault(f"plain_weights={plain}", []).append(us)
    res.setdefault("chain_equal", []).append(bool(torch.equal(ref, y)))
    print("chain plain weights", plain, round(us, 1), flush=True)
del layers
from arbitor import for_inference
from arbitor.model.config import preset
from benchmarks.bench_speed import _build
from benchmarks.bench_decode import _graphed_tps
cfg = preset("3b", linear="ternary", compute_dtype="bfloat16", max_ctx=576, activation_checkpointing=False)
m = for_inference(for_inference(_build(cfg, dev).eval()), fuse_projections=True)
first = None
for i, plain in enumerate((False, True, False, True)):
    set_plain(plain)
    tps, out, _ = _graphed_tps(m, 1, 512, 64, 5, dev, compile=True)
    first = out if first is None else first
    res["decode"][f"plain_weights={plain} #{i}"] = {"tokens_per_s": tps, "tokens_equal": bool(torch.equal(first, out))}
    print(i, plain, res["decode"][f"plain_weights={plain} #{i}"], flush=True)
    with open(os.path.join(OUT, "pdl5.json"), "w") as f:
        json.dump(res, f, indent=1)

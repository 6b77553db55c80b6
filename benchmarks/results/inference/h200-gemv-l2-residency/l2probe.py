"""Probe: does a side-stream L2 prefetch of the next layer's bytes speed up a chain of decode GEMVs (3b, M=1)?"""
import json, os, sys, time, math
import torch, triton, triton.language as tl
from arbitor.ternary.ops.decode_triton import decode_forward
from arbitor.ternary.ops.triton_common import n_sm

OUT = os.environ.get("OUT", ".")
dev = torch.device("cuda")
torch.manual_seed(0)
SHAPES = [("qkvg", 12288, 3072), ("o", 3072, 3072), ("lti", 3072, 6144), ("up", 12288, 3072), ("down", 3072, 12288)]
NB = int(os.environ.get("NB", "22"))
GS = 64


@triton.jit
def pf_ld_kernel(a_ptr, NA, y_ptr, PER, BLOCK: tl.constexpr):
    p = tl.program_id(0)
    start = p.to(tl.int64) * PER
    o = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.int32)
    end = tl.minimum(start + PER, NA)
    for i in range(0, PER, 4 * BLOCK):
        i0 = start + i + o
        a0 = tl.load(a_ptr + i0, mask=i0 < end, other=0)
        a1 = tl.load(a_ptr + i0 + BLOCK, mask=i0 + BLOCK < end, other=0)
        a2 = tl.load(a_ptr + i0 + 2 * BLOCK, mask=i0 + 2 * BLOCK < end, other=0)
        a3 = tl.load(a_ptr + i0 + 3 * BLOCK, mask=i0 + 3 * BLOCK < end, other=0)
        acc ^= a0 ^ a1 ^ a2 ^ a3
    tl.store(y_ptr + p, tl.xor_sum(acc, 0))


@triton.jit
def pf_bulk_kernel(a_ptr, NBYTES, y_ptr, PIECE: tl.constexpr):
    p = tl.program_id(0)
    lane = tl.arange(0, 32)
    off = (p.to(tl.int64) * 32 + lane) * PIECE
    size = tl.minimum(tl.maximum(NBYTES - off, 0), PIECE).to(tl.int32)
    addr = (a_ptr + tl.minimum(off, NBYTES)).to(tl.int64)
    r = tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.b32 $0, 0; }",
        "=r,l,r", (addr, size), dtype=tl.int32, is_pure=False, pack=1)
    tl.store(y_ptr + p * 32 + lane, r)


SINK = torch.zeros(1 << 20, dtype=torch.int32, device=dev)


def words(t):
    return t.view(torch.uint8).view(-1).view(torch.int32)


def pf_ld(layer, progs, warps=4, block=1024):
    for t in (layer[1], layer[2]):
        w = words(t)
        per = triton.cdiv(triton.cdiv(w.numel(), progs), 4 * block) * 4 * block
        grid = triton.cdiv(w.numel(), per)
        pf_ld_kernel[(grid,)](w, w.numel(), SINK, per, BLOCK=block, num_warps=warps)


def pf_bulk(layer, piece=4096):
    for t in (layer[1], layer[2]):
        nb = t.numel() * t.element_size()
        grid = triton.cdiv(nb, 32 * piece)
        pf_bulk_kernel[(grid,)](t.view(torch.uint8), nb, SINK, PIECE=piece, num_warps=1)


def make_layer(N, K):
    shifts = torch.tensor([0, 2, 4, 6], device=dev, dtype=torch.uint8)
    codes = torch.randint(0, 3, (N, K // 4, 4), device=dev, dtype=torch.uint8)
    T = (codes << shifts).sum(-1, dtype=torch.uint8)
    S = torch.exp2(torch.randint(-8, -5, (N, K // GS), device=dev).float() + torch.rand(N, K // GS, device=dev))
    return (K, T.contiguous(), S.contiguous())


layers = []
for b in range(NB):
    for name, N, K in SHAPES:
        layers.append(make_layer(N, K))
xs = {K: torch.randn(1, K, device=dev, dtype=torch.bfloat16) for K in {k for _, _, k in SHAPES}}
total_bytes = sum(l[1].numel() + l[2].numel() * 4 for l in layers)
print(f"{len(layers)} layers, {total_bytes / 2**20:.0f} MiB", flush=True)


def capture(body):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        body(); body()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        body()
    return g


def time_graph(g, reps=30):
    g.replay(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(reps):
        a.record(); g.replay(); b.record(); b.synchronize()
        ts.append(a.elapsed_time(b) * 1000)
    ts.sort()
    return ts[len(ts) // 2]


side = torch.cuda.Stream()
outs = [None] * len(layers)


def chain(pf=None, d=1, seq=None):
    seq = seq if seq is not None else layers

    def body():
        cur = torch.cuda.current_stream()
        if pf is not None:
            side.wait_stream(cur)
            with torch.cuda.stream(side):
                for j in range(min(d, len(seq))):
                    pf(seq[j])
        for j, L in enumerate(seq):
            if pf is not None and j + d < len(seq):
                ev = torch.cuda.Event()
                ev.record(cur)
                side.wait_event(ev)
                with torch.cuda.stream(side):
                    pf(seq[j + d])
            outs[j] = decode_forward(xs[L[0]], L[1], L[2], L[0], GS)
        if pf is not None:
            cur.wait_stream(side)
    return body


res = {"device": torch.cuda.get_device_name(), "layers": len(layers), "MiB": total_bytes / 2**20, "rows": {}}
sms = n_sm(dev)


def row(name, body, reps=30):
    t0 = time.time()
    g = capture(body)
    us = time_graph(g, reps)
    del g
    res["rows"][name] = us
    print(f"{name:40s} {us:9.1f} us  ({us / len(layers):6.2f} us/GEMV) [{time.time() - t0:.1f}s]", flush=True)
    with open(os.path.join(OUT, "l2probe.json"), "w") as f:
        json.dump(res, f, indent=1)
    return us


ref = None
row("chain", chain())
ref = [o.clone() for o in outs]
row("chain_again", chain())
for d in (1, 2):
    for p in (1, 2, 4):
        row(f"pf_ld d={d} progs/sm={p}", chain(lambda L, p=p: pf_ld(L, p * sms), d))
    row(f"pf_bulk d={d} piece=4096", chain(pf_bulk, d))
    row(f"pf_bulk d={d} piece=16384", chain(lambda L: pf_bulk(L, 16384), d))
    row(f"pf_ld d={d} progs/sm=1 warps8", chain(lambda L: pf_ld(L, sms, 8), d))
same = all(torch.equal(a, b) for a, b in zip(ref, outs))
res["outputs_equal"] = same
print("outputs equal:", same)
# hot: each shape's GEMV repeated on one layer (weights in L2)
for i, (name, N, K) in enumerate(SHAPES):
    seq = [layers[i]] * NB
    g = capture(chain(seq=seq))
    us = time_graph(g)
    del g
    seqc = [layers[i + 5 * b] for b in range(NB)]
    g = capture(chain(seq=seqc))
    usc = time_graph(g)
    del g
    res["rows"][f"hot_{name}"] = us / NB
    res["rows"][f"cold_{name}"] = usc / NB
    print(f"{name:6s} hot {us / NB:6.2f} us  cold {usc / NB:6.2f} us", flush=True)
# prefetch kernel alone
for nm, fn in (("pf_ld 1/sm", lambda L: pf_ld(L, sms)), ("pf_ld 2/sm", lambda L: pf_ld(L, 2 * sms)),
               ("pf_bulk", pf_bulk)):
    def body(fn=fn):
        for L in layers:
            fn(L)
    g = capture(body)
    us = time_graph(g)
    del g
    res["rows"][f"alone {nm}"] = us
    print(f"alone {nm}: {us:.1f} us for {total_bytes / 2**20:.0f} MiB = {total_bytes / us / 1e6:.2f} TB/s", flush=True)
with open(os.path.join(OUT, "l2probe.json"), "w") as f:
    json.dump(res, f, indent=1)

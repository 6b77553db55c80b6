"""Sweep of fp8 quantiser forms at the layer shapes' grad_y / x (H200)."""
import json, os, sys, torch, triton, triton.language as tl
sys.path.insert(0, os.getcwd())
from arbitor.ternary.ops import fp8_triton as F
from arbitor.ternary.ops.fp8 import quantize_t_torch, padded_tokens, FP8_DTYPE, scaled_gradw

@triton.jit
def strip_kernel(t_ptr, q_ptr, scale_ptr, bad_ptr, M, MP, C, stride_m, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    amax = tl.zeros((BLOCK_C,), dtype=tl.float32)
    nonfinite = tl.zeros((BLOCK_C,), dtype=tl.int32)
    for m0 in range(0, M, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        v = tl.abs(tl.load(t_ptr + m.to(tl.int64)[:, None] * stride_m + c[None, :], mask=(m < M)[:, None] & c_mask[None, :], other=0.0).to(tl.float32))
        nonfinite += tl.sum(((v != v) | (v == float("inf"))).to(tl.int32), axis=0)
        amax = tl.maximum(amax, tl.max(v, axis=0))
    if tl.sum(nonfinite, axis=0) > 0:
        tl.atomic_max(bad_ptr, 1)
    e = F._exponent(amax.to(tl.int32, bitcast=True))
    s = F._pow2(-e)
    for m0 in range(0, MP, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        v = tl.load(t_ptr + m.to(tl.int64)[:, None] * stride_m + c[None, :], mask=(m < M)[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
        q = tl.trans(F._e4m3(v * s[None, :]))
        tl.store(q_ptr + c.to(tl.int64)[:, None] * MP + m[None, :], q, mask=c_mask[:, None] & (m < MP)[None, :])
    tl.store(scale_ptr + c, F._pow2(e), mask=c_mask)

def strip(t, bad, bm, bc, warps):
    M, C = t.shape; MP = padded_tokens(M)
    q = torch.empty(C, MP, dtype=FP8_DTYPE, device=t.device); scale = torch.empty(C, dtype=torch.float32, device=t.device)
    strip_kernel[(triton.cdiv(C, bc),)](t, q.view(torch.uint8), scale, bad, M, MP, C, t.stride(0), BLOCK_M=bm, BLOCK_C=bc, num_warps=warps)
    return q, scale

def two(t, bad, bm, bc, bm2, bc2, warps):
    M, C = t.shape; MP = padded_tokens(M)
    amax = torch.zeros(C, dtype=torch.int32, device=t.device)
    q = torch.empty(C, MP, dtype=FP8_DTYPE, device=t.device); scale = torch.empty(C, dtype=torch.float32, device=t.device)
    F.amax_kernel[(triton.cdiv(M, bm), triton.cdiv(C, bc))](t, amax, bad, M, C, t.stride(0), BLOCK_M=bm, BLOCK_C=bc, num_warps=warps)
    F.cast_t_kernel[(triton.cdiv(MP, bm2), triton.cdiv(C, bc2))](t, amax, q.view(torch.uint8), scale, M, MP, C, t.stride(0), BLOCK_M=bm2, BLOCK_C=bc2, num_warps=warps)
    return q, scale

def bench(fn, n=20):
    fn(); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s): fn()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        for _ in range(n): fn()
    ts = []
    for _ in range(7):
        a = torch.cuda.Event(True); b = torch.cuda.Event(True); a.record(); g.replay(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b) / n)
    ts.sort(); return ts[3] * 1000

def _main():
    out = {}
    bad = torch.zeros((), dtype=torch.int32, device="cuda")
    for (M, C) in [(4096, 12288), (4096, 3072), (8192, 4096), (16384, 8192)]:
        t = torch.randn(M, C, device="cuda", dtype=torch.bfloat16)
        ref = quantize_t_torch(t)
        rows = {"launcher": bench(lambda: F.quantize_t_triton(t, bad)), "clone (read 2 B + write 2 B)": bench(lambda: t.clone())}
        for bm, bc, bm2, bc2, w in [(64, 64, 64, 64, 4), (128, 64, 64, 64, 4), (64, 128, 64, 64, 4), (256, 64, 64, 128, 4), (128, 128, 128, 64, 8), (32, 256, 64, 64, 4), (64, 64, 128, 128, 8)]:
            k = f"two {bm}x{bc} / {bm2}x{bc2} w{w}"
            q, s = two(t, bad, bm, bc, bm2, bc2, w)
            ok = torch.equal(q.view(torch.uint8), ref[0].view(torch.uint8)) and torch.equal(s, ref[1])
            rows[k] = (bench(lambda: two(t, bad, bm, bc, bm2, bc2, w)), ok)
        for bm, bc, w in [(64, 16, 2), (128, 16, 4), (64, 32, 4), (128, 32, 4), (32, 64, 4), (64, 64, 4), (128, 64, 8)]:
            k = f"strip {bm}x{bc} w{w}"
            q, s = strip(t, bad, bm, bc, w)
            ok = torch.equal(q.view(torch.uint8), ref[0].view(torch.uint8)) and torch.equal(s, ref[1])
            rows[k] = (bench(lambda: strip(t, bad, bm, bc, w)), ok)
        out[f"{M}x{C}"] = rows
        print(M, C, json.dumps(rows), flush=True)
    json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "quant_sweep.json"), "w"), indent=1)

if __name__ == "__main__":
    _main()

"""Probe: rows_kernel launch variants, scale_max_kernel block sizes (H200)."""
import json, os, torch, triton
import triton.language as tl
from triton.testing import do_bench_cudagraph as bench
from arbitor.ternary.ops import fp8_triton as F
from arbitor.ternary.ops.triton_common import float64_bits, INTERPRETED
from arbitor.ternary.ops.fp8 import FP8_DTYPE
dev = 'cuda'
res = {"device": torch.cuda.get_device_name(), "rows": [], "scale_max": []}

def rows(x, block, warps):
    M, C = x.shape
    q = torch.empty(M, C, dtype=FP8_DTYPE, device=dev); s = torch.empty(M, dtype=torch.float32, device=dev)
    one = C <= block
    F.rows_kernel[(M,)](x, q.view(torch.uint8), s, C, x.stride(0), BLOCK=block, ONE_READ=one, INTERP=False, num_warps=warps)
    return q, s

for C in (3072, 12288):
    x = torch.randn(4096, C, device=dev, dtype=torch.bfloat16)
    ref = F.quantize_rows_triton(x)
    row = {"C": C, "current_us": 1e3 * bench(lambda: F.quantize_rows_triton(x), rep=100, return_mode="median"),
           "copy_us": 1e3 * bench(lambda: x.clone(), rep=100, return_mode="median")}
    for block in sorted({triton.next_power_of_2(C), 1024, 2048, 4096}):
        for w in (2, 4, 8, 16, 32):
            if block < C and block < 1024: continue
            try:
                q, s = rows(x, block, w)
                ok = bool(torch.equal(q.view(torch.uint8), ref[0].view(torch.uint8)) and torch.equal(s, ref[1]))
                row[f"b{block}_w{w}_us"] = (1e3 * bench(lambda: rows(x, block, w), rep=100, return_mode="median"), ok)
            except Exception as e:
                row[f"b{block}_w{w}_us"] = str(e)[:80]
    res["rows"].append(row); print(row, flush=True)

@triton.jit
def noop_kernel(p):
    tl.store(p, 1)

z = torch.zeros(1, device=dev)
res["noop_us"] = 1e3 * bench(lambda: noop_kernel[(1,)](z), rep=100, return_mode="median")
for N, K in ((3072, 3072), (12288, 3072), (3072, 12288)):
    G = K // 64
    E = torch.randint(-8, -5, (N, G), dtype=torch.int8, device=dev)
    c = torch.randint(-1000, 1000, (N, G), dtype=torch.int64, device=dev)
    st = torch.tensor(80, device=dev); p = torch.tensor(0, device=dev)
    row = {"N": N, "K": K}
    for block in (256, 1024, 4096):
        for w in (4, 8):
            P = triton.cdiv(N * G, block)
            part = torch.empty(P, dtype=torch.float64, device=dev)
            f = lambda: F.scale_max_kernel[(P,)](E, c, st, p, part, N * G, float64_bits(4.0), GS=64, BLOCK=block, num_warps=w)
            row[f"b{block}_w{w}_us"] = 1e3 * bench(f, rep=100, return_mode="median")
    T = torch.randint(0, 255, (N, K // 4), dtype=torch.uint8, device=dev)
    row["expand_fp8_total_us"] = 1e3 * bench(lambda: F.expand_fp8_triton(T, E, c, st, p, K, 64, 4.0), rep=100, return_mode="median")
    res["scale_max"].append(row); print(row, flush=True)
print("noop", res["noop_us"])
json.dump(res, open(os.environ["OUT"] + "/kprobe.json", "w"), indent=1)

"""Probe 2: rows_kernel fine sweep; grad_W at 3072^2 bf16 vs fp8 (quantisers + GEMM) (H200)."""
import json, os, torch, triton
from triton.testing import do_bench_cudagraph as bench
from arbitor.ternary.ops import fp8_triton as F
from arbitor.ternary.ops.fp8 import FP8_DTYPE, scaled_gradw
dev = 'cuda'
res = {"device": torch.cuda.get_device_name(), "rows": [], "gradw": []}
def rows(x, block, warps):
    M, C = x.shape
    q = torch.empty(M, C, dtype=FP8_DTYPE, device=dev); s = torch.empty(M, dtype=torch.float32, device=dev)
    F.rows_kernel[(M,)](x, q.view(torch.uint8), s, C, x.stride(0), BLOCK=block, ONE_READ=C <= block, INTERP=False, num_warps=warps)
    return q, s
for C in (768, 1536, 3072, 4096, 6144, 8192, 12288, 16384):
    x = torch.randn(4096, C, device=dev, dtype=torch.bfloat16)
    ref = F.quantize_rows_triton(x)
    row = {"C": C, "now_us": 1e3 * bench(lambda: F.quantize_rows_triton(x), rep=60, return_mode="median"),
           "copy_us": 1e3 * bench(lambda: x.clone(), rep=60, return_mode="median"), "variants": {}}
    for block in (256, 512, 1024, 2048, 4096):
        for w in (1, 2, 4, 8):
            if block // w > 2048 or block // w < 32: continue
            q, s = rows(x, block, w)
            ok = bool(torch.equal(q.view(torch.uint8), ref[0].view(torch.uint8)) and torch.equal(s, ref[1]))
            row["variants"][f"b{block}_w{w}"] = (round(1e3 * bench(lambda: rows(x, block, w), rep=60, return_mode="median"), 2), ok)
    best = min(row["variants"].items(), key=lambda kv: kv[1][0])
    row["best"] = best
    res["rows"].append(row); print(C, "now", round(row["now_us"], 2), "copy", round(row["copy_us"], 2), "best", best, flush=True)
for N, K in ((3072, 3072), (12288, 3072)):
    M = 4096
    gy = torch.randn(M, N, device=dev, dtype=torch.bfloat16); x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    bad = torch.zeros((), dtype=torch.int32, device=dev)
    r = {"N": N, "K": K, "M": M}
    r["bf16_gemm_us"] = 1e3 * bench(lambda: gy.t() @ x, rep=60, return_mode="median")
    r["quant_gy_us"] = 1e3 * bench(lambda: F.quantize_t_triton(gy, bad), rep=60, return_mode="median")
    r["quant_x_us"] = 1e3 * bench(lambda: F.quantize_t_triton(x, bad), rep=60, return_mode="median")
    gq, sg = F.quantize_t_triton(gy, bad); xq, sx = F.quantize_t_triton(x, bad)
    r["fp8_gemm_us"] = 1e3 * bench(lambda: scaled_gradw(gq, sg, xq, sx), rep=60, return_mode="median")
    res["gradw"].append(r); print(r, flush=True)
json.dump(res, open(os.environ["OUT"] + "/kprobe2.json", "w"), indent=1)

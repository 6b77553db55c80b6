"""bigint ballot with and without gradw_fp8 at a grid of shapes (H200): where does fp8 grad_W pay?"""
import json, os, sys, torch
sys.path.insert(0, os.getcwd())
from arbitor.ternary.ops.backend import get_ops
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_sweep import bench
ops = get_ops(torch.device("cuda"))
out = []
for M in (4096, 16384):
    for K, N in [(384, 384), (384, 1536), (1536, 384), (768, 768), (768, 3072), (1024, 1024), (1024, 4096), (4096, 1024),
                 (1536, 1536), (2048, 2048), (2048, 8192), (8192, 2048), (3072, 3072)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16); gy = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        T = torch.randint(0, 256, (N, K // 4), device="cuda", dtype=torch.uint8) & 0x55
        corr = torch.zeros(N, K // 64, dtype=torch.int64, device="cuda"); p = torch.zeros((), dtype=torch.int64, device="cuda"); nf = torch.zeros_like(p)
        r = {"M": M, "K": K, "N": N}
        for fp8 in (False, True):
            r["fp8" if fp8 else "bf16"] = bench(lambda: ops.bigint_ballot_(gy, x, T, corr, p, nf, K, 64, gradw_fp8=fp8))
        r["speedup"] = r["bf16"] / r["fp8"]
        out.append(r); print(json.dumps(r), flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "ballot_sweep.json"), "w"), indent=1)

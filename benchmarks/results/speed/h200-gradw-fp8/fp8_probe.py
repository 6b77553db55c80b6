import json, os, sys, time, torch
torch.manual_seed(0)
dev = "cuda"
out = os.environ.get("OUT", "/tmp")
res = {"torch": torch.__version__, "rows": []}
E4 = torch.float8_e4m3fn
def timeit(fn, n=30):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        for _ in range(n): fn()
    ts = []
    for _ in range(5):
        a = torch.cuda.Event(True); b = torch.cuda.Event(True)
        a.record(); g.replay(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b) / n)
    ts.sort(); return ts[2]

@torch.compile
def quant_t(t):  # [M, C] -> fp8 [C, M] row-major, scale [C] (dequant multiplier)
    amax = t.abs().amax(dim=0).float().clamp_min(1e-12)
    s = 448.0 / amax
    q = (t.float() * s).to(E4)
    return q.t().contiguous(), (1.0 / s)

for (M, K, N) in [(8192, 4096, 4096), (16384, 8192, 8192), (4096, 3072, 12288), (4096, 12288, 3072)]:
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    gy = torch.randn(M, N, device=dev, dtype=torch.bfloat16) * 1e-3
    row = {"shape": f"{M}x{K}->{N}"}
    row["bf16_gradw_ms"] = timeit(lambda: gy.t() @ x)
    a, sa = quant_t(gy); b, sb = quant_t(x)
    row["quant_ms"] = timeit(lambda: (quant_t(gy), quant_t(x)))
    for mode in ["rowwise", "tensorwise"]:
        try:
            if mode == "rowwise":
                A, B = sa[:, None].contiguous(), sb[None, :].contiguous()
            else:
                A = sa.max().reshape(()); B = sb.max().reshape(())
            f = lambda: torch._scaled_mm(a, b.t(), scale_a=A, scale_b=B, out_dtype=torch.bfloat16)
            y = f()
            row[f"fp8_{mode}_ms"] = timeit(f)
            if mode == "rowwise":
                ref = gy.float().t() @ x.float()
                agree = (torch.sign(y.float()) == torch.sign(ref)).float().mean().item()
                agree_bf = (torch.sign((gy.t() @ x).float()) == torch.sign(ref)).float().mean().item()
                row["sign_agree_fp8_vs_fp32"] = agree; row["sign_agree_bf16_vs_fp32"] = agree_bf
                row["rel_err_fp8"] = ((y.float() - ref).norm() / ref.norm()).item()
        except Exception as e:
            row[f"fp8_{mode}_error"] = repr(e)[:300]
    print(row, flush=True)
    res["rows"].append(row)
json.dump(res, open(os.path.join(out, "fp8_probe.json"), "w"), indent=1)

import json, os, torch, triton
from triton.testing import do_bench_cudagraph as bench
from arbitor.ternary.ops.fp8_triton import quantize_rows_triton, expand_fp8_triton
from arbitor.ternary.ops.linear_triton import expand_weight_triton
from arbitor.ternary.format import pack_ternary
dev = 'cuda'
res = {"device": torch.cuda.get_device_name(), "rows": [], "expand": []}
for C in (3072, 6144, 12288):
    x = torch.randn(4096, C, device=dev, dtype=torch.bfloat16)
    t_q = bench(lambda: quantize_rows_triton(x), rep=100, return_mode="median")
    t_c = bench(lambda: x.clone(), rep=100, return_mode="median")
    gb = 4096 * C * 3 / 1e9
    res["rows"].append({"M": 4096, "C": C, "quant_us": t_q * 1e3, "copy_us": t_c * 1e3, "quant_TBps": gb / t_q})
    print(res["rows"][-1], flush=True)
for N, K in ((12288, 3072), (3072, 12288), (3072, 6144), (3072, 3072)):
    T = pack_ternary(torch.randint(-1, 2, (N, K), dtype=torch.int8)).to(dev)
    E = torch.randint(-8, -5, (N, K // 64), dtype=torch.int8, device=dev)
    c = torch.zeros(N, K // 64, dtype=torch.int64, device=dev)
    st = torch.tensor(8, device=dev); p = torch.tensor(0, device=dev)
    row = {"N": N, "K": K}
    for tr in (False, True):
        row[f"fp8_T{int(tr)}_us"] = 1e3 * bench(lambda: expand_fp8_triton(T, E, c, st, p, K, 64, 16.0, transpose=tr), rep=100, return_mode="median")
    row["bf16_us"] = 1e3 * bench(lambda: expand_weight_triton(T, E, c, st, p, K, 64, 16.0, torch.bfloat16), rep=100, return_mode="median")
    row["fp8_bytes_floor_us"] = (N * K * 1.25) / 4.0e12 * 1e6
    res["expand"].append(row)
    print(row, flush=True)
json.dump(res, open(os.environ["OUT"] + "/qbench.json", "w"), indent=1)

import json, os, torch
from triton.testing import do_bench_cudagraph as bench
from arbitor.ternary.ops.fp8_triton import expand_fp8_triton, expand_fp8_group_triton
from arbitor.ternary.format import pack_ternary
dev = 'cuda'
res = []
for N, K in ((12288, 3072), (3072, 12288), (3072, 3072)):
    T = pack_ternary(torch.randint(-1, 2, (N, K), dtype=torch.int8)).to(dev)
    E = torch.randint(-8, -5, (N, K // 64), dtype=torch.int8, device=dev)
    c = torch.randint(-500, 500, (N, K // 64), dtype=torch.int64, device=dev)
    st = torch.tensor(8, device=dev); p = torch.tensor(0, device=dev)
    row = {"N": N, "K": K}
    for tr in (False, True):
        row[f"fp8_T{int(tr)}_us"] = 1e3 * bench(lambda: expand_fp8_triton(T, E, c, st, p, K, 64, 4.0, transpose=tr), rep=100, return_mode="median")
    if N == 3072 and K == 3072:
        sts = [(T, E, c, st, p)] * 4
        row["stack4_T0_us"] = 1e3 * bench(lambda: expand_fp8_group_triton(sts, K, 64, [4.0] * 4), rep=100, return_mode="median")
    row["fp8_bytes_floor_us"] = (N * K * 1.25) / 4.0e12 * 1e6
    res.append(row); print(row, flush=True)
json.dump(res, open(os.environ["OUT"] + "/ebench.json", "w"), indent=1)

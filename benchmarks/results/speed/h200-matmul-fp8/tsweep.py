import json, os, torch
from triton.testing import do_bench_cudagraph as bench
from arbitor.ternary.ops import fp8_triton as F
from arbitor.ternary.format import pack_ternary
dev = 'cuda'; out = []
N, K = 12288, 3072
T = pack_ternary(torch.randint(-1, 2, (N, K), dtype=torch.int8)).to(dev)
E = torch.randint(-8, -5, (N, K // 64), dtype=torch.int8, device=dev)
c = torch.zeros(N, K // 64, dtype=torch.int64, device=dev)
st = torch.tensor(8, device=dev); p = torch.tensor(0, device=dev)
for tr, tiles in ((False, [(32, 256), (64, 128), (64, 256), (16, 512), (128, 128)]), (True, [(128, 64), (256, 64), (128, 128), (64, 128), (256, 128)])):
    for t in tiles:
        if tr: F.EXPAND_TILE_T = t
        else: F.EXPAND_TILE = t
        us = 1e3 * bench(lambda: F.expand_fp8_triton(T, E, c, st, p, K, 64, 16.0, transpose=tr), rep=100, return_mode="median")
        out.append({"transpose": tr, "tile": t, "us": us}); print(out[-1], flush=True)
json.dump(out, open(os.environ["OUT"] + "/tsweep.json", "w"), indent=1)

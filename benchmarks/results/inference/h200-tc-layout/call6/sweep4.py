"""Mini-sweep 3: blocks a warp (R) and warps for the tc layout at one row, the 3b preset's widest projections
(3072 x 12288: q/k/v/gate and up) and 8192²; graph chain as bench_decode (weights rotated past L2)."""
import json, os, sys
import torch
sys.path.insert(0, os.getcwd())
from benchmarks.bench_decode import _graph_time, _copies_for
from arbitor.ternary.format import tc_tiles
from arbitor.ternary.ops.decode_triton import decode_forward
out = {}
dev = torch.device("cuda")
cfgs = [None, {"R": 2, "num_warps": 4}, {"R": 2, "num_warps": 2}, {"R": 2, "num_warps": 8}, {"R": 4, "num_warps": 4},
        {"R": 2, "num_warps": 4, "WARP_SPLIT": False}, {"R": 1, "num_warps": 8, "PROGRAMS_PER_SM": 1},
        {"R": 1, "num_warps": 2, "PROGRAMS_PER_SM": 4}, {"R": 2, "num_warps": 4, "PROGRAMS_PER_SM": 1},
        {"R": 4, "num_warps": 2}]
for K, N in [(3072, 12288), (8192, 8192), (4096, 4096)]:
    _, _, states = _copies_for(N, K, 64, 60 * 2 ** 20, dev)
    tiles = [tc_tiles(s[0], s[5], K, 64) for s in states]
    x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
    ref = decode_forward(x, *tiles[0], K, 64)
    for rep in range(2):
        for cfg in cfgs:
            try:
                y = decode_forward(x, *tiles[0], K, 64, config=cfg)
                ok = bool(torch.allclose(y.float(), ref.float(), rtol=1e-2, atol=1e-2 * ref.float().abs().max().item()))
                t = _graph_time([(lambda t=t: decode_forward(x, *t, K, 64, config=cfg)) for t in tiles], 40)
            except Exception as e:
                t, ok = None, repr(e)[:150]
            out.setdefault(f"{K}x{N} {cfg}", []).append((t, ok))
            print(K, N, cfg, t and round(t * 1e3, 3), ok, flush=True)
    del states, tiles
json.dump(out, open(os.environ.get("OUT", "/tmp") + "/sweep4.json", "w"), indent=1)

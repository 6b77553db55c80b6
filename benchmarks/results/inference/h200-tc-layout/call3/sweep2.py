"""Mini-sweep: the tc layout's one-wave tile at one row for long rows (N = 3072), 8 vs 16 warps, R 1 / 2."""
import json, os, sys
import torch
sys.path.insert(0, os.getcwd())
from benchmarks.bench_decode import _graph_time, _copies_for
from arbitor.ternary.format import tc_tiles
from arbitor.ternary.ops.decode_triton import decode_forward
out = {}
dev = torch.device("cuda")
for K, N in [(12288, 3072), (6144, 3072), (4096, 4096), (3072, 3072)]:
    _, _, states = _copies_for(N, K, 64, 60 * 2 ** 20, dev)
    tiles = [tc_tiles(s[0], s[5], K, 64) for s in states]
    x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
    ref = decode_forward(x, *tiles[0], K, 64)
    for cfg in (None, {"num_warps": 16}, {"num_warps": 8}, {"num_warps": 4}, {"R": 2, "num_warps": 8}, {"R": 2, "num_warps": 16},
                {"num_warps": 16, "AHEAD": 2, "X_AHEAD": False}, {"num_warps": 8, "AHEAD": 2, "X_AHEAD": False}):
        try:
            y = decode_forward(x, *tiles[0], K, 64, config=cfg)
            ok = bool(torch.allclose(y.float(), ref.float(), rtol=1e-2, atol=1e-2 * ref.float().abs().max().item()))
            t = _graph_time([(lambda t=t: decode_forward(x, *t, K, 64, config=cfg)) for t in tiles], 40)
        except Exception as e:
            t, ok = None, repr(e)[:150]
        out[f"{K}x{N} {cfg}"] = (t, ok)
        print(K, N, cfg, t and round(t * 1e3, 2), ok, flush=True)
    del states, tiles
json.dump(out, open(os.environ.get("OUT", "/tmp") + "/sweep2.json", "w"), indent=1)

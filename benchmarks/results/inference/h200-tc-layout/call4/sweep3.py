"""Mini-sweep 2: load hints of the tc layout's default tiles at one row (L2_PREFETCH, X_AHEAD), each shape's default
against the same launch with the hint; graph chain as bench_decode (weights rotated past L2)."""
import json, os, sys
import torch
sys.path.insert(0, os.getcwd())
from benchmarks.bench_decode import _graph_time, _copies_for
from arbitor.ternary.format import tc_tiles
from arbitor.ternary.ops.decode_triton import decode_forward
out = {}
dev = torch.device("cuda")
for K, N in [(12288, 3072), (6144, 3072), (4096, 4096), (3072, 3072), (3072, 12288), (8192, 8192)]:
    _, _, states = _copies_for(N, K, 64, 60 * 2 ** 20, dev)
    tiles = [tc_tiles(s[0], s[5], K, 64) for s in states]
    x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
    ref = decode_forward(x, *tiles[0], K, 64)
    for rep in range(2):
        for cfg in (None, {"L2_PREFETCH": 64}, {"L2_PREFETCH": 128}, {"L2_PREFETCH": 256}, {"X_AHEAD": False}):
            y = decode_forward(x, *tiles[0], K, 64, config=cfg)
            ok = bool(torch.equal(y, ref))
            t = _graph_time([(lambda t=t: decode_forward(x, *t, K, 64, config=cfg)) for t in tiles], 40)
            out.setdefault(f"{K}x{N} {cfg}", []).append((t, ok))
            print(K, N, cfg, round(t * 1e3, 3), ok, flush=True)
    del states, tiles
json.dump(out, open(os.environ.get("OUT", "/tmp") + "/sweep3.json", "w"), indent=1)

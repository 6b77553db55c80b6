"""Probe: decode_tc in the tc layout (format.tc_tiles) against the row layout, GEMV chain timing as bench_decode."""
import json, math, os, sys, time, itertools, traceback
import torch
sys.path.insert(0, os.getcwd())
from benchmarks.bench_decode import _graph_time, _copies_for, _floors
from arbitor.ternary.format import tc_tiles
from arbitor.ternary.ops.decode_tc import tc_forward

out = {"device": torch.cuda.get_device_name(), "rows": []}
OUT = os.environ.get("OUT", "/tmp")
gs, l2 = 64, 60 * 2 ** 20
shapes = [(4096, 4096), (8192, 8192), (3072, 12288), (12288, 3072), (3072, 3072), (6144, 3072)]
reps = 40
t0 = time.time()
def grid(M):
    if M == 1:
        g = [dict(num_warps=w, PROGRAMS_PER_SM=p, WARP_SPLIT=ws) for w in (2, 4, 8) for p in (1, 2, 4) for ws in (True, False)]
        g += [dict(num_warps=4, PROGRAMS_PER_SM=1, WARP_SPLIT=True, RING=2), dict(num_warps=4, PROGRAMS_PER_SM=2, WARP_SPLIT=True, RING=2),
              dict(num_warps=4, PROGRAMS_PER_SM=2, WARP_SPLIT=True, AHEAD=2, X_AHEAD=False),
              dict(num_warps=4, PROGRAMS_PER_SM=2, WARP_SPLIT=True, L2_PREFETCH=256)]
        return g
    return [dict(num_warps=w, PROGRAMS_PER_SM=p, WARP_SPLIT=ws) for w in (2, 4) for p in (2, 4) for ws in (True, False)] + [
        dict(num_warps=2, PROGRAMS_PER_SM=2, WARP_SPLIT=False, L2_PREFETCH=256), dict(num_warps=4, PROGRAMS_PER_SM=2, WARP_SPLIT=True, L2_PREFETCH=256)]
for K, N in shapes:
    _, f_bytes, states = _copies_for(N, K, gs, l2, torch.device("cuda"))
    tiles = [tc_tiles(s[0], s[5], K, gs) for s in states]
    floors = _floors(states, reps, torch.device("cuda"))
    for M in (1, 4, 16):
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        row = {"K": K, "N": N, "M": M, "read_floor_ms": floors["read_floor_ms"]}
        y0 = tc_forward(x, states[0][0], states[0][5], K, gs)
        y1 = tc_forward(x, tiles[0][0], tiles[0][1], K, gs, out_features=N)
        row["equal"] = bool(torch.equal(y0, y1))
        row["rows_ms"] = _graph_time([(lambda s=s: tc_forward(x, s[0], s[5], K, gs)) for s in states], reps)
        row["rows_no_pdl_ms"] = _graph_time([(lambda s=s: tc_forward(x, s[0], s[5], K, gs, {"PDL": False})) for s in states], reps)
        row["tiled_ms"] = _graph_time([(lambda t=t: tc_forward(x, t[0], t[1], K, gs, out_features=N)) for t in tiles], reps)
        row["tiled_no_pdl_ms"] = _graph_time([(lambda t=t: tc_forward(x, t[0], t[1], K, gs, {"PDL": False}, out_features=N)) for t in tiles], reps)
        sweep = {}
        for cfg in grid(M):
            key = json.dumps(cfg, sort_keys=True)
            try:
                yc = tc_forward(x, tiles[0][0], tiles[0][1], K, gs, cfg, out_features=N)
                ok = bool(torch.allclose(yc.float(), y0.float(), rtol=2e-2, atol=2e-2 * y0.float().abs().max().item()))
                sweep[key] = (_graph_time([(lambda t=t: tc_forward(x, t[0], t[1], K, gs, cfg, out_features=N)) for t in tiles], reps), ok)
            except Exception as e:
                sweep[key] = (None, repr(e)[:200])
        row["sweep"] = sweep
        best = min((v[0], k) for k, v in sweep.items() if v[0] is not None and v[1] is True)
        row["best"] = best
        out["rows"].append(row)
        print(K, N, M, "eq", row["equal"], "rows %.4f tiled %.4f (noPDL %.4f/%.4f) best %.4f %s floor %.4f  t=%.0f" % (
            row["rows_ms"], row["tiled_ms"], row["rows_no_pdl_ms"], row["tiled_no_pdl_ms"], best[0], best[1], floors["read_floor_ms"], time.time() - t0), flush=True)
        json.dump(out, open(f"{OUT}/tiled1.json", "w"), indent=1)
    del states, tiles
    torch.cuda.empty_cache()

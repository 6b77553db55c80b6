"""Probe: decode_tc in the tc layout with PREFETCH (L2 bulk prefetch of the warp's words and scales before the PDL
wait) and with an early trigger (launch_dependents right after the wait), GEMV chain timing as bench_decode; then
the 3b step at batch 1 (fused, compiled + graphed) with each, in one process."""
import json, os, sys, time
import torch
sys.path.insert(0, os.getcwd())
import arbitor.ternary.ops.decode_tc as D
from benchmarks.bench_decode import _graph_time, _copies_for, _floors

OUT = os.environ.get("OUT", "/tmp")
PART = sys.argv[1]
orig_asm = D.tc_gemv_asm
EARLY = {"on": False}


def patched(*a, **k):
    s = orig_asm(*a, **k)
    if EARLY["on"]:
        s = s.replace("griddepcontrol.wait;", "griddepcontrol.wait;\ngriddepcontrol.launch_dependents;")
    return s


D.tc_gemv_asm = patched
BASE = (dict(D.TC_TILES_TILED), D.TC_TILED_ONE_WAVE)


def set_tables(prefetch: bool, early: bool):
    EARLY["on"] = early
    D.TC_TILES_TILED = {k: t._replace(PREFETCH=prefetch) for k, t in BASE[0].items()}
    D.TC_TILED_ONE_WAVE = (BASE[1][0], BASE[1][1]._replace(PREFETCH=prefetch), BASE[1][2]._replace(PREFETCH=prefetch))


VARIANTS = [("default", 0, False), ("early", 0, True), ("pf1+early", 1, True), ("pf2+early", 2, True),
            ("pf4+early", 4, True), ("pfall+early", 4096, True), ("pf2", 2, False)]
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
t0 = time.time()
if PART == "gemv":
    from arbitor.ternary.format import tc_tiles
    gs, l2, reps = 64, 60 * 2 ** 20, 40
    res["rows"] = []
    for K, N in [(3072, 12288), (3072, 3072), (6144, 3072), (12288, 3072), (4096, 4096), (8192, 8192)]:
        _, f_bytes, states = _copies_for(N, K, gs, l2, torch.device("cuda"))
        tiles = [tc_tiles(s[0], s[5], K, gs) for s in states]
        floors = _floors(states, reps, torch.device("cuda"))
        for M in (1, 4, 16):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            row = {"K": K, "N": N, "M": M, "read_floor_ms": floors["read_floor_ms"]}
            set_tables(0, False)
            y0 = D.tc_forward(x, tiles[0][0], tiles[0][1], K, gs)
            for name, pf, early in VARIANTS + [("default 2", 0, False)]:
                set_tables(pf, early)
                y = D.tc_forward(x, tiles[0][0], tiles[0][1], K, gs)
                row[name + " equal"] = bool(torch.equal(y, y0))
                row[name] = _graph_time([(lambda t=t: D.tc_forward(x, t[0], t[1], K, gs)) for t in tiles], reps)
                if name.startswith("default"):
                    row[name + " no pdl"] = _graph_time(
                        [(lambda t=t: D.tc_forward(x, t[0], t[1], K, gs, {"PDL": False})) for t in tiles], reps)
            set_tables(0, False)
            res["rows"].append(row)
            print(K, N, M, {k: (round(v * 1000, 2) if isinstance(v, float) else v) for k, v in row.items()
                            if k not in ("K", "N", "M")}, f"t={time.time() - t0:.0f}", flush=True)
            json.dump(res, open(f"{OUT}/pf_gemv2.json", "w"), indent=1)
        del states, tiles
        torch.cuda.empty_cache()
else:
    from arbitor import for_inference
    from arbitor.model.config import preset
    from benchmarks.bench_speed import _build
    from benchmarks.bench_decode import _graphed_tps
    dev = torch.device("cuda")
    cfg = preset("3b", linear="ternary", compute_dtype="bfloat16", max_ctx=576, activation_checkpointing=False)
    m = for_inference(_build(cfg, dev).eval(), fuse_projections=True)
    res["decode"] = {}
    outs = {}
    order = [v for v in VARIANTS if v[0] in PART.split(",")]
    for name, pf, early in order + [(order[0][0] + " 2", order[0][1], order[0][2])]:
        set_tables(pf, early)
        t1 = time.time()
        tps, out, _ = _graphed_tps(m, 1, 512, 64, 5, dev, compile=True, profile=False)
        outs[name] = out
        first = next(iter(outs))
        res["decode"][name] = {"tokens_per_s": tps, "tokens_equal_to_first": bool(torch.equal(out, outs[first]))}
        print(name, res["decode"][name], f"{time.time() - t1:.0f}s", flush=True)
        json.dump(res, open(f"{OUT}/pf_decode.json", "w"), indent=1)

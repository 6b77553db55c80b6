"""Probe 3: PDL with the weights loaded before the wait, or everything after it; x by ld.global."""
import json, os, time
import torch
from arbitor.ternary.ops import decode_tc
from arbitor.model import decode_attention
OUT = os.environ.get("OUT", ".")
dev = torch.device("cuda")
res = {"device": torch.cuda.get_device_name(), "decode": {}}
from arbitor import for_inference
from arbitor.model.config import preset
from benchmarks.bench_speed import _build
from benchmarks.bench_decode import _graphed_tps
models = {}
for linear in ("ternary", "dense"):
    cfg = preset("3b", linear=linear, compute_dtype="bfloat16", max_ctx=576, activation_checkpointing=False)
    m = _build(cfg, dev).eval()
    models[linear] = for_inference(for_inference(m) if linear == "ternary" else m, fuse_projections=True)
PDL = {"triton.enable_pdl": True}
ref = None
for name, side, k, pre in [("ref", "ternary", 0, True), ("pre-wait loads", "ternary", 1, True),
                           ("wait first", "ternary", 1, False), ("dense", "dense", 0, True),
                           ("pre-wait loads 2", "ternary", 1, True), ("wait first 2", "ternary", 1, False),
                           ("ref 2", "ternary", 0, True), ("dense 2", "dense", 0, True)]:
    decode_tc.PDL_MODE = decode_attention.PDL_MODE = k
    decode_tc.X_LOAD_PDL, decode_tc.PRE_WAIT_LOADS = "", pre
    decode_tc.tc_gemv_asm.cache_clear()
    t0 = time.time()
    tps, out, table = _graphed_tps(models[side], 1, 512, 64, 5, dev, compile=True, compile_options=PDL,
                                   profile=name in ("pre-wait loads", "wait first"))
    if side == "ternary":
        ref = out if ref is None else ref
        res["decode"][name] = {"tps": tps, "tokens_equal_ref": bool(torch.equal(ref, out))}
    else:
        res["decode"][name] = {"tps": tps}
    if table:
        res.setdefault("profile", {})[name] = table
    print(name, res["decode"][name], f"{time.time() - t0:.0f}s", flush=True)
    with open(os.path.join(OUT, "pdl4.json"), "w") as f:
        json.dump(res, f, indent=1)

"""A/B in one process: the 3b step (fused, compiled + graphed, batch 1) with the attention's append into a settled
cache (EARLY: position + first tile before the PDL wait; single-pass merge) against the plain launch, and with
decode_tc's trigger right after its wait; the dense model the same (settled / plain)."""
import json, os, sys, time
import torch
sys.path.insert(0, os.getcwd())
import arbitor.model.decode_attention as DA
import arbitor.ternary.ops.decode_tc as D
from arbitor import for_inference
from arbitor.model.config import preset
from benchmarks.bench_speed import _build
from benchmarks.bench_decode import _graphed_tps

OUT = os.environ.get("OUT", "/tmp")
MODE = {"settled": True, "tc_early": False}
real_launch, real_asm = DA._launch, D.tc_gemv_asm


def launch(q, k, v, mask, block_l=None, split_tiles=None, append=None, cache_settled=False):
    return real_launch(q, k, v, mask, block_l, split_tiles, append, cache_settled and MODE["settled"])


def asm(*a, **k):
    s = real_asm(*a, **k)
    return s.replace("griddepcontrol.wait;", "griddepcontrol.wait;\ngriddepcontrol.launch_dependents;") \
        if MODE["tc_early"] else s


DA._launch, D.tc_gemv_asm = launch, asm
dev = torch.device("cuda")
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "decode": {}}
for linear in ("ternary", "dense"):
    cfg = preset("3b", linear=linear, compute_dtype="bfloat16", max_ctx=576, activation_checkpointing=False)
    m = _build(cfg, dev).eval()
    m = for_inference(m, fuse_projections=True)
    variants = [("settled", True, False), ("plain", False, False)]
    if linear == "ternary":
        variants += [("settled+tc_early", True, True)]
    variants += [("settled 2", True, False), ("plain 2", False, False)]
    outs = {}
    for name, settled, tc_early in variants:
        MODE.update(settled=settled, tc_early=tc_early)
        t0 = time.time()
        tps, out, _ = _graphed_tps(m, 1, 512, 64, 5, dev, compile=True, profile=False)
        outs[name] = out
        res["decode"][f"{linear}/{name}"] = {"tokens_per_s": tps, "tokens_equal_to_first": bool(torch.equal(out, outs["settled"]))}
        print(linear, name, res["decode"][f"{linear}/{name}"], f"{time.time() - t0:.0f}s", flush=True)
        json.dump(res, open(f"{OUT}/ab.json", "w"), indent=1)
    del m
    torch.cuda.empty_cache()

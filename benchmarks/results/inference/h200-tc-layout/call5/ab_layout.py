"""The 3b step at batch 1 (fused, compiled + graphed) with every frozen layer in the row layout against the tc
layout (format.tc_tiles), alternating, in one process; greedy tokens compared."""
import json, os, time
import torch
from arbitor import for_inference
from arbitor.model.config import preset
from arbitor.ternary import TernaryInferenceLinear
from benchmarks.bench_speed import _build
from benchmarks.bench_decode import _graphed_tps

OUT = os.environ.get("OUT", ".")
dev = torch.device("cuda")
res = {"device": torch.cuda.get_device_name(), "decode": {}}
cfg = preset("3b", linear="ternary", compute_dtype="bfloat16", max_ctx=576, activation_checkpointing=False)
m = for_inference(for_inference(_build(cfg, dev).eval(), layout="rows"), fuse_projections=True, layout="rows")
layers = [x for x in m.modules() if isinstance(x, TernaryInferenceLinear)]
outs = {}
for name, layout in (("rows", "rows"), ("tc", "tc"), ("rows 2", "rows"), ("tc 2", "tc")):
    for x in layers:
        x.to_layout(layout)
    torch.cuda.empty_cache()
    t0 = time.time()
    tps, out, _ = _graphed_tps(m, 1, 512, 64, 5, dev, compile=True, profile=False)
    outs[name] = out
    res["decode"][name] = {"tokens_per_s": tps, "layouts": sorted({x.layout for x in layers}),
                           "tokens_equal_to_rows": bool(torch.equal(out, outs["rows"])),
                           "tokens_equal_to_first_of_layout": bool(torch.equal(out, outs[layout]))}
    print(name, res["decode"][name], f"{time.time() - t0:.0f}s", flush=True)
    with open(os.path.join(OUT, "ab_layout.json"), "w") as f:
        json.dump(res, f, indent=1)

"""The landed form (decode_tc and the attention as programmatic dependents, PTX waiting before its first load, x
read coherently; Inductor's PDL in COMPILE_OPTIONS): outputs equal with it on and off, and the 3b step at batch 1
with everything on against everything off, in one process."""
import json, os, time
import torch
from arbitor.ternary.ops import decode_tc
from arbitor.model import decode_attention
from arbitor.ternary.ops.decode_triton import decode_forward

OUT = os.environ.get("OUT", ".")
dev = torch.device("cuda")
res = {"device": torch.cuda.get_device_name(), "gemv_equal": {}, "decode": {}}


def save():
    with open(os.path.join(OUT, "pdl_final.json"), "w") as f:
        json.dump(res, f, indent=1)


real_ok = decode_tc.pdl_ok


def kernels_pdl(on):
    decode_tc.pdl_ok = decode_attention.pdl_ok = real_ok if on else (lambda device: False)


shifts = torch.tensor([0, 2, 4, 6], device=dev, dtype=torch.uint8)
for N, K in [(12288, 3072), (3072, 3072), (3072, 6144), (3072, 12288), (4096, 4096), (8192, 8192), (40, 256)]:
    codes = torch.randint(0, 3, (N, K // 4, 4), device=dev, dtype=torch.uint8)
    T = (codes << shifts).sum(-1, dtype=torch.uint8).contiguous()
    S = torch.exp2(torch.randint(-8, -5, (N, K // 64), device=dev).float() + torch.rand(N, K // 64, device=dev))
    for dtype in (torch.bfloat16, torch.float16):
        for M in (1, 4, 9, 16):
            x = torch.randn(M, K, device=dev, dtype=dtype)
            ys = []
            for on in (False, True):
                kernels_pdl(on)
                ys.append(decode_forward(x, T, S, K, 64))
                ys.append(decode_forward(x, T, S, K, 64, relu_square=True))
            res["gemv_equal"][f"{N}x{K} M{M} {dtype}"] = torch.equal(ys[0], ys[2]) and torch.equal(ys[1], ys[3])
kernels_pdl(True)
print("gemv equal with and without PDL:", all(res["gemv_equal"].values()), len(res["gemv_equal"]), flush=True)
save()

from arbitor import for_inference
from arbitor.model.config import preset
from benchmarks.bench_speed import _build
from benchmarks.bench_decode import _graphed_tps
cfg = preset("3b", linear="ternary", compute_dtype="bfloat16", max_ctx=576, activation_checkpointing=False)
m = for_inference(for_inference(_build(cfg, dev).eval()), fuse_projections=True)
outs = {}
for name, on in (("all PDL off", False), ("all PDL on (default)", True), ("all PDL off 2", False),
                 ("all PDL on (default) 2", True)):
    kernels_pdl(on)
    t0 = time.time()
    tps, out, table = _graphed_tps(m, 1, 512, 64, 5, dev, compile=True,
                                   compile_options=None if on else {"triton.enable_pdl": False},
                                   profile=not name.endswith("2"))
    outs[name] = out
    res["decode"][name] = {"tokens_per_s": tps, "tokens_equal_to_first": bool(torch.equal(out, outs["all PDL off"]))}
    if table:
        res.setdefault("profile", {})[name] = table
    print(name, res["decode"][name], f"{time.time() - t0:.0f}s", flush=True)
    save()
kernels_pdl(True)

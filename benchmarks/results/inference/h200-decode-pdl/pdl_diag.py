"""The ``3b`` decode step at batch 1 (compiled + graphed, bench_decode's models, prompt and timing) with and without
programmatic dependent launch (PDL): Inductor's kernels (``triton.enable_pdl``), ``decode_tc``'s GEMV (its weights
prefetched to L2 before ``griddepcontrol.wait``) and the decode attention (its K / V prefetched). Both models with
fused q / k / v / gate projections (the dense one through ``concat_linear``). Greedy tokens of every variant
against the same model's eager static-cache step.

    PYTHONPATH=. python benchmarks/results/inference/h200-decode-pdl/pdl_diag.py --out OUT.json

Runs on branch ``wip/kernel-pdl`` (commit 7bf4dca), where ``TcTile.PDL`` and ``decode_attention.USE_PDL`` exist;
main keeps only Inductor's PDL as a ``bench_decode.py`` variant (README.md here says why).
"""
import argparse
import json
import sys
import time

import torch

sys.path.insert(0, '.')
from arbitor import for_inference  # noqa: E402
from arbitor.model import decode, decode_attention  # noqa: E402
from arbitor.model.config import preset  # noqa: E402
from arbitor.model.decode import GraphedDecoder  # noqa: E402
from arbitor.ternary.ops import decode_tc  # noqa: E402
from benchmarks.bench_decode import _graphed_tps  # noqa: E402
from benchmarks.bench_speed import _build  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--reps", type=int, default=3)
args = ap.parse_args()
dev = torch.device('cuda')
torch.set_grad_enabled(False)
BASE_TILES, BASE_SHORT = dict(decode_tc.TC_TILES), decode_tc.TC_TILE_SHORT_K


def set_pdl(inductor: bool, kernels: bool) -> None:
    decode.COMPILE_OPTIONS = {"emulate_precision_casts": True, "triton.enable_pdl": inductor}
    decode_tc.TC_TILES = {k: v._replace(PDL=kernels) for k, v in BASE_TILES.items()}
    decode_tc.TC_TILE_SHORT_K = (BASE_SHORT[0], BASE_SHORT[1]._replace(PDL=kernels))
    decode_attention.USE_PDL = kernels


models = {}
for linear in ("ternary", "dense"):
    cfg = preset('3b', linear=linear, compute_dtype='bfloat16', max_ctx=512 + 64, activation_checkpointing=False)
    models[f"{linear}-fused"] = for_inference(_build(cfg, dev).eval(), fuse_projections=True)
idx = torch.randint(0, 256, (1, 512), generator=torch.Generator().manual_seed(0)).to(dev)
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
       "variants": []}
set_pdl(False, False)
eager = {n: GraphedDecoder(m, 1, 576, cuda_graph=False).generate(idx, 9, temperature=0)[0, 512:]
         for n, m in models.items()}
variants = [("ternary-fused", False, False), ("ternary-fused", True, False), ("ternary-fused", True, True),
            ("dense-fused", False, False), ("dense-fused", True, False), ("dense-fused", True, True)]
for name, ind, ker in variants:
    set_pdl(ind, ker)
    torch._dynamo.reset()
    t = time.time()
    try:
        tps, out, table = _graphed_tps(models[name], 1, 512, 64, args.reps, dev, compile=True,
                                       profile=name.startswith("ternary") and ker)
        same = (out[0, 512:521] == eager[name]).long().cumprod(0).sum()
        row = {"model": name, "inductor_pdl": ind, "kernel_pdl": ker, "tokens_per_s": tps,
               "tokens_equal_eager": f"{int(same)}/9", "tokens": out[0, 512:].tolist(), "kernels": table,
               "wall_s": time.time() - t}
    except Exception as exc:  # noqa: BLE001
        row = {"model": name, "inductor_pdl": ind, "kernel_pdl": ker, "error": repr(exc)[:500]}
    res["variants"].append(row)
    print({k: v for k, v in row.items() if k not in ("tokens", "kernels")}, flush=True)
    json.dump(res, open(args.out, "w"), indent=1)

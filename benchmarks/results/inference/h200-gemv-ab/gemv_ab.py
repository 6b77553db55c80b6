"""A/B of the M = 1 GEMV on the GPU: the be9c8d5 kernel against today's (new decode; LATE_SUM off/on), a small
tile grid each, at the four GEMV shapes, weights rotated past L2 (bench_decode's timing)."""
import json
import os
import sys
import time
import torch
import triton
sys.path.insert(0, os.getcwd())
from benchmarks.bench_decode import _copies_for, _graph_time, GEMV_SHAPES
from arbitor.ternary.ops import decode_triton as dt
from arbitor.ternary.ops.triton_common import split_len, split_buffers, n_sm
OLD = "be9c8d5"   # the commit whose word decode is the A side


def _old_kernels():
    """``decode_gemv_kernel`` with the ``word_dots`` / ``group_sums`` of commit ``OLD``, taken from git (the
    functions renamed ``old_*``) into a temporary module."""
    import importlib.util
    import subprocess
    import tempfile

    def grab(path, name):
        src = subprocess.run(["git", "show", f"{OLD}:{path}"], capture_output=True, text=True, check=True).stdout
        i = src.index("@triton.jit\ndef " + name)
        j = min(k for k in (src.find("\n@triton.jit", i + 5), src.find("\n# ---", i + 5), len(src)) if k != -1)
        return src[i:j]
    body = ("import triton\nimport triton.language as tl\n"
            "from arbitor.ternary.ops.triton_common import byte_to_float, gemv_split_start, split_epilogue\n"
            "from arbitor.ternary.ops.decode_triton import _load_s\n\n"
            + grab("arbitor/ternary/ops/triton_common.py", "word_dots").replace("def word_dots", "def old_word_dots")
            + "\n" + grab("arbitor/ternary/ops/triton_common.py", "group_sums").replace("def group_sums",
                                                                                      "def old_group_sums")
            + "\n" + grab("arbitor/ternary/ops/decode_triton.py", "decode_gemv_kernel")
            .replace("def decode_gemv_kernel", "def old_decode_gemv_kernel").replace("word_dots(", "old_word_dots(")
            .replace("group_sums(", "old_group_sums("))
    path = os.path.join(tempfile.mkdtemp(), "old_kernels.py")   # Triton's jit reads the source from a file
    with open(path, "w") as f:
        f.write(body)
    spec = importlib.util.spec_from_file_location("old_kernels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.old_decode_gemv_kernel


old_decode_gemv_kernel = _old_kernels()

out = os.environ.get("OUT", "/tmp")
T_END = time.time() + float(os.environ.get("AB_LIMIT", "300"))
dev = torch.device("cuda")
gs = 64

def launch(kern, x, T, S, K, bn, bk, warps, pps, late):
    N = T.shape[0]
    G = K // gs
    tiles = triton.cdiv(N, bn)
    want = max(1, triton.cdiv(pps * n_sm(dev), tiles))
    split = max(1, min(want, K // bk))
    red_per, split = split_len(K, split, bk)
    y = torch.empty(1, N, dtype=x.dtype, device=dev)
    ws, cnt = split_buffers(y, split, tiles)
    extra = {} if late is None else {"LATE_SUM": late}
    kern[(tiles, split)](x, T.view(torch.int32), S, y, ws, cnt, N, K, G, K // 16, x.stride(1), split, red_per // 16,
                         0x3F000000, GS=gs, BLOCK_N=bn, BLOCK_K=bk, INTERP=False, num_warps=warps, **extra)
    return y

grid_new = [(bn, bk, w, p) for bn in (8, 16, 32) for bk in (1024, 2048, 4096) for w in (4, 8) for p in (2, 4)]
grid_old = [(16, 2048, 4, 2), (16, 2048, 4, 4), (32, 2048, 4, 4), (16, 1024, 4, 2), (8, 2048, 4, 2), (16, 4096, 4, 2)]
rows = []
for K, N in GEMV_SHAPES:
    _, f_bytes, states = _copies_for(N, K, gs, 60 * 2 ** 20, dev)
    x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
    Ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(max(2, -(-4 * 60 * 2 ** 20 // (N * K * 2))))]
    base = _graph_time([(lambda W=W: x @ W.t()) for W in Ws], 20)
    ref = launch(old_decode_gemv_kernel, x, states[0][0], states[0][5], K, 16, 2048, 4, 2, None)
    for variant, kern, late, grid in [("old", old_decode_gemv_kernel, None, grid_old),
                                      ("new", dt.decode_gemv_kernel, False, grid_new),
                                      ("new_late", dt.decode_gemv_kernel, True, grid_new)]:
        for bn, bk, w, p in grid:
            if time.time() > T_END:
                break
            if bk > max(16, triton.next_power_of_2(K)):
                continue
            try:
                y = launch(kern, x, states[0][0], states[0][5], K, bn, bk, w, p, late)
                same = bool(torch.equal(y, ref))
                err = float((y.float() - ref.float()).abs().max())
                ms = _graph_time([(lambda s=s: launch(kern, x, s[0], s[5], K, bn, bk, w, p, late)) for s in states], 20)
            except Exception as exc:
                rows.append({"K": K, "N": N, "variant": variant, "cfg": [bn, bk, w, p], "error": repr(exc)[:200]})
                continue
            rows.append({"K": K, "N": N, "variant": variant, "cfg": [bn, bk, w, p], "ms": ms, "cublas_ms": base,
                         "ratio": base / ms, "tbps": f_bytes / (ms * 1e9), "equal_to_old": same, "max_abs_diff": err})
        best = min((r for r in rows if r.get("ms") and r["K"] == K and r["N"] == N and r["variant"] == variant),
                   key=lambda r: r["ms"], default=None)
        print(K, N, variant, "best", best, flush=True)
    json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, open(f"{out}/gemv_ab.json", "w"), indent=1)
    del states, Ws
    torch.cuda.empty_cache()

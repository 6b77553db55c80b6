"""Probe: L2 prefetch of the next layer's bytes inside decode_tc; floors of the GEMV harness."""
import json, math, os, sys, time
import torch, triton, triton.language as tl
sys.path.insert(0, os.getcwd())
from benchmarks.bench_decode import _graph_time, _copies_for
from arbitor.ternary.ops import decode_triton

@triton.jit
def empty_kernel(y_ptr):
    pid = tl.program_id(0)
    tl.store(y_ptr + pid, pid)

@triton.jit
def stream_kernel(a_ptr, b_ptr, y_ptr, NA, NB, PER_A, PER_B, BA: tl.constexpr, BB: tl.constexpr):
    pid = tl.program_id(0)
    oa = pid * PER_A + tl.arange(0, BA)
    ob = pid * PER_B + tl.arange(0, BB)
    a = tl.load(a_ptr + oa, mask=(oa < NA) & (oa < pid * PER_A + PER_A), other=0)
    b = tl.load(b_ptr + ob, mask=(ob < NB) & (ob < pid * PER_B + PER_B), other=0)
    tl.store(y_ptr + pid, tl.sum(a, 0) + tl.sum(b, 0))

def main():
    out = os.environ.get("OUT", ".devrun")
    dev = torch.device("cuda")
    nsm = torch.cuda.get_device_properties(dev).multi_processor_count
    rows = []
    for K, N in [(4096, 4096), (8192, 8192), (3072, 12288), (12288, 3072)]:
        _, f_bytes, states = _copies_for(N, K, 64, 60 * 2 ** 20, dev)
        n = len(states)
        Ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(max(2, math.ceil(240 * 2**20 / (N * K * 2))))]
        for M in (1, 16):
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            r = {"K": K, "N": N, "M": M, "copies": n, "bytes": f_bytes}
            ref = decode_triton.decode_forward(x, states[0][0], states[0][5], K, 64)
            got = decode_triton.decode_forward(x, states[0][0], states[0][5], K, 64, prefetch=(states[1][0], states[1][5]))
            r["pf_equal"] = bool(torch.equal(ref, got))
            r["tc"] = _graph_time([(lambda s=s: decode_triton.decode_forward(x, s[0], s[5], K, 64)) for s in states], 200)
            r["tc_pf_next"] = _graph_time([(lambda s=s, t=states[(j + 1) % n]: decode_triton.decode_forward(
                x, s[0], s[5], K, 64, prefetch=(t[0], t[5]))) for j, s in enumerate(states)], 200)
            r["tc_pf_self"] = _graph_time([(lambda s=s: decode_triton.decode_forward(
                x, s[0], s[5], K, 64, prefetch=(s[0], s[5]))) for s in states], 200)
            r["cublas"] = _graph_time([(lambda W=W: x @ W.t()) for W in Ws], 200)
            if M == 1:
                y = torch.empty(4096, device=dev, dtype=torch.int32)
                for P in (512, 1056):
                    r[f"empty_{P}"] = _graph_time([(lambda: empty_kernel[(P,)](y, num_warps=4)) for s in states], 200)
                for P in (264, 528, 1056):
                    def st(s, P=P):
                        a = s[0].view(torch.int32).view(-1); b = s[5].view(-1).view(torch.int32)
                        pa, pb = triton.cdiv(a.numel(), P), triton.cdiv(b.numel(), P)
                        stream_kernel[(P,)](a, b, y, a.numel(), b.numel(), pa, pb, BA=triton.next_power_of_2(pa),
                                            BB=triton.next_power_of_2(pb), num_warps=8)
                    r[f"stream_{P}"] = _graph_time([(lambda s=s: st(s)) for s in states], 200)
            print(json.dumps({k: (round(v * 1000, 2) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
            rows.append(r)
        del states, Ws
        torch.cuda.empty_cache()
    json.dump(rows, open(os.path.join(out, "pf_probe.json"), "w"), indent=1)

main()

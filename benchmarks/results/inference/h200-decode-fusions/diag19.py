"""Issue 19 diagnostics (H200): attention kernel variants; the compiled 3b token step's Inductor code + profile."""
import json, logging, math, os, sys, time
import torch, triton, triton.language as tl
sys.path.insert(0, os.getcwd())
OUT = os.environ.get("OUT", "/tmp/out")
res = {}

def flush():
    json.dump(res, open(f"{OUT}/diag19.json", "w"), indent=1)

from arbitor.model.decode_attention import _combine, _LOG2E, one_query_attention
from arbitor.ternary.ops.triton_common import arrival_counters, last_to_arrive, n_sm, reset_arrivals
from benchmarks.bench_decode import _graph_time

@triton.jit
def _var_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, acc_ptr, ml_ptr, cnt_ptr, out_ptr, H, L, n_splits, BH, qk_scale,
                s_qb, s_qh, s_kb, s_kh, s_kl, s_vb, s_vh, s_vl, s_m, s_ob, s_oh,
                HD: tl.constexpr, BLOCK_L: tl.constexpr, SPLIT_TILES: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
                KV_DEP: tl.constexpr):
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    d = tl.arange(0, HD)
    q = tl.load(q_ptr + b * s_qb + h * s_qh + d).to(tl.float32) * qk_scale
    k_base = k_ptr + b * s_kb + h * s_kh
    v_base = v_ptr + b * s_vb + h * s_vh
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.zeros((), tl.float32)
    acc = tl.zeros([HD], tl.float32)
    start = sp * (SPLIT_TILES * BLOCK_L)
    for t in range(SPLIT_TILES):
        pos = start + t * BLOCK_L + tl.arange(0, BLOCK_L)
        inside = pos < L
        allowed = inside & (tl.load(mask_ptr + pos.to(tl.int64) * s_m, mask=inside, other=0) != 0)
        rows = pos.to(tl.int64)
        if KV_DEP:
            lm = allowed
        else:
            lm = inside
        kt = tl.load(k_base + rows[:, None] * s_kl + d[None, :], mask=lm[:, None], other=0.0)
        vt = tl.load(v_base + rows[:, None] * s_vl + d[None, :], mask=lm[:, None], other=0.0)
        s = tl.where(allowed, tl.sum(kt.to(tl.float32) * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_sub)
        p = tl.exp2(s - m_sub)
        acc = acc * alpha + tl.sum(tl.where(allowed[:, None], p[:, None] * vt.to(tl.float32), 0.0), axis=0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        m_i = m_new
    if n_splits == 1:
        tl.store(out_ptr + b * s_ob + h * s_oh + d, (acc / l_i).to(out_ptr.dtype.element_ty))
    else:
        part = bh.to(tl.int64) * n_splits + sp
        tl.store(acc_ptr + part * HD + d, acc)
        tl.store(ml_ptr + part, m_i)
        tl.store(ml_ptr + BH * n_splits + part, l_i)
        if last_to_arrive(cnt_ptr + bh, n_splits):
            _combine(acc_ptr, ml_ptr, out_ptr + b * s_ob + h * s_oh, bh, n_splits, BH, HD, SPLIT_BLOCK)
            reset_arrivals(cnt_ptr + bh)

def var_attn(q, k, v, mask, block_l, split_tiles, warps, kv_dep):
    B, H, _, hd = q.shape
    L = k.shape[2]
    tiles = triton.cdiv(L, block_l)
    splits = triton.cdiv(tiles, split_tiles)
    mask_u8 = mask.reshape(-1).view(torch.uint8)
    out = torch.empty((B, H, 1, hd), dtype=q.dtype, device=q.device)
    parts = B * H * splits if splits > 1 else 1
    acc = torch.empty((parts, hd), dtype=torch.float32, device=q.device)
    ml = torch.empty((2, parts), dtype=torch.float32, device=q.device)
    cnt = arrival_counters(q.device, B * H)
    _var_kernel[(B * H, splits)](q, k, v, mask_u8, acc, ml, cnt, out, H, L, splits, B * H, hd ** -0.5 * _LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        mask_u8.stride(0), out.stride(0), out.stride(1), HD=hd, BLOCK_L=block_l, SPLIT_TILES=split_tiles,
        SPLIT_BLOCK=min(16, triton.next_power_of_2(splits)), KV_DEP=kv_dep, num_warps=warps)
    return out

def attention_part():
    dev = torch.device("cuda")
    H, hd, L, P = 24, 128, 576, 512
    mask = (torch.arange(L, device=dev) <= P).view(1, L)
    for B in (1, 16):
        kv = 2 * B * H * L * hd * 2
        n = max(2, math.ceil(4 * 60 * 2 ** 20 / kv))
        sets = [(torch.randn(B, H, 1, hd, device=dev, dtype=torch.bfloat16),
                 torch.randn(B, H, L, hd, device=dev, dtype=torch.bfloat16),
                 torch.randn(B, H, L, hd, device=dev, dtype=torch.bfloat16)) for _ in range(n)]
        ref = one_query_attention(*sets[0], mask)
        row = {"current": _graph_time([(lambda s=s: one_query_attention(*s, mask)) for s in sets], 50) * 1e3}
        for bl in (32, 64, 128):
            for st in (1, 2):
                for w in (4, 8):
                    for dep in (True, False):
                        if bl * st > L and st > 1:
                            continue
                        name = f"bl{bl}_st{st}_w{w}_{'dep' if dep else 'nodep'}"
                        try:
                            o = var_attn(*sets[0], mask, bl, st, w, dep)
                            ok = bool(torch.equal(o, ref)) if (bl == 64 and st == 1) else float((o.float() - ref.float()).abs().max())
                            t = _graph_time([(lambda s=s: var_attn(*s, mask, bl, st, w, dep)) for s in sets], 50) * 1e3
                            row[name] = (round(t, 2), ok)
                        except Exception as e:
                            row[name] = repr(e)[:200]
        res[f"attention_b{B}_us"] = row
        print(B, sorted(((v[0], k) for k, v in row.items() if isinstance(v, tuple)))[:8], row["current"], flush=True)
        flush()

def step_part():
    from arbitor import for_inference
    from arbitor.model.config import preset
    from arbitor.model.layers import LTIInjection
    from benchmarks.bench_speed import _build
    from benchmarks.bench_decode import _graphed_tps
    import copy
    dev = torch.device("cuda")
    built = {}
    for linear in ("ternary", "dense"):
        cfg = preset("3b", linear=linear, compute_dtype="bfloat16", max_ctx=576, activation_checkpointing=False)
        built[linear] = for_inference(_build(cfg, dev).eval(), fuse_projections=True)
    fh = logging.FileHandler(f"{OUT}/output_code.log")
    torch._logging.set_logs(output_code=True)
    logging.getLogger("torch").addHandler(fh)
    orig = LTIInjection.forward
    variants = [("ternary", "all", None), ("ternary", "no_lti_token_step", lambda self, h, state=None: self._sequence(h, state)),
                ("dense", "all", None), ("ternary", "all_again", None)]
    for linear, name, patch in variants:
        LTIInjection.forward = patch or orig
        t0 = time.time()
        tps, out, table = _graphed_tps(built[linear], 1, 512, 64, 5, dev, compile=True, profile=True)
        torch._logging.set_logs(output_code=False)
        res[f"step_b1_{linear}_{name}"] = {"tps": tps, "s": time.time() - t0, "table": table,
                                            "tokens": out[0, 512:].tolist()}
        print(linear, name, "b1 tps", tps, table["gpu_us_per_step"], table["kernels_per_step"], flush=True)
        flush()
    LTIInjection.forward = orig

if __name__ == "__main__":
    res["device"] = torch.cuda.get_device_name()
    for p in sys.argv[1:]:
        globals()[f"{p}_part"]()

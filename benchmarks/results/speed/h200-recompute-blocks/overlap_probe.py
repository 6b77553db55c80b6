"""Probe (not project code): cast ballots on a side CUDA stream, joined at ternary_step; correctness + 3b timing."""
import collections, json, os, sys, time
import torch
sys.path.insert(0, '.')
sys.argv = ['x']
from benchmarks import bench_speed as B
from arbitor.model.config import preset
from arbitor.ternary.ops import library as lib
import arbitor.ternary.step as stepmod

STATE = {"depth": 0, "side": None, "q": collections.deque()}


def _wrap(fn):
    def inner(grad_y, x, *a, **k):
        D = STATE["depth"]
        if D <= 0 or not grad_y.is_cuda:
            return fn(grad_y, x, *a, **k)
        cur = torch.cuda.current_stream()
        if os.environ.get("DBG"):
            print("ballot cur", cur.cuda_stream, "capturing", torch.cuda.is_current_stream_capturing(), flush=True)
        if STATE["side"] is None:
            STATE["side"] = torch.cuda.Stream()
        side = STATE["side"]
        side.wait_stream(cur)
        with torch.cuda.stream(side):
            fn(grad_y, x, *a, **k)
        ev = torch.cuda.Event()
        ev.record(side)
        q = STATE["q"]
        q.append((ev, grad_y, x))
        STATE["used"] = True
        while len(q) > D:
            cur.wait_event(q.popleft()[0])
    return inner


lib.bigint_ballot_triton_ = _wrap(lib.bigint_ballot_triton_)
lib._counter_ballot = _wrap(lib._counter_ballot)
_orig_step = stepmod.ternary_step


def _joined_step(model):
    if os.environ.get("DBG"):
        print("join cur", torch.cuda.current_stream().cuda_stream, "capturing", torch.cuda.is_current_stream_capturing(), flush=True)
    if STATE.get("used"):
        STATE["used"] = False
        torch.cuda.current_stream().wait_stream(STATE["side"])
        STATE["q"].clear()
    return _orig_step(model)


stepmod.ternary_step = _joined_step
dev = torch.device('cuda')
OUT = os.environ['OUT']
res = {"check": {}, "bench": []}

# 1. correctness: the same small model, eager warm-up + graph replays, with and without the side stream
def state_of(model):
    return {k: v.detach().clone() for k, v in model.named_buffers() if v.dtype in (torch.uint8, torch.int8, torch.int64, torch.int32)}

for rule in os.environ.get("CHECK", "bigint-fp8all,counter-fp8all").split(","):
    gen = torch.Generator(device=dev).manual_seed(1)
    batches = [torch.randint(0, 256, (8, 129), device=dev, generator=gen) for _ in range(3)]
    states = []
    for depth in (0, 3):
        STATE["depth"] = depth
        torch.manual_seed(0)
        cfg = preset('small', ternary=B.RULES[rule], max_ctx=128, activation_checkpointing=True)
        model = B._build(cfg, dev)
        step = B._step_fn(model, None, 'ternary')
        g = B._graphed(step, batches[0])
        for i in range(4):
            g(batches[i % 3])
        torch.cuda.synchronize()
        states.append(state_of(model))
        model = step = g = None
        B._free()
    diff = {k: int((states[0][k] != states[1][k]).sum()) for k in states[0]}
    nz = {k: v for k, v in diff.items() if v}
    res["check"][rule] = {"buffers": len(diff), "differing": nz}
    print("check", rule, len(diff), "buffers; differing:", nz, flush=True)

if os.environ.get("DBG"):
    sys.exit(0)
# 2. timing of the 3b step (blocks-graph, checkpointed)
batch, ctx = 8, 512
gen = torch.Generator(device=dev).manual_seed(0)
batches = [torch.randint(0, 256, (batch, ctx + 1), device=dev, generator=gen) for _ in range(2)]
STATE["depth"] = 0
dense, _ = B._measure_model("dense 3b", preset("3b", linear="dense", activation_checkpointing=False), "float",
                            batches, 5, 2, ["compile-graph"], dev)
res["dense"] = dense
for rule in os.environ.get("RULES", "bigint-fp8all,counter-fp8all").split(","):
    for depth in [int(d) for d in os.environ.get("DEPTHS", "0,2,6").split(",")]:
        STATE["depth"] = depth
        STATE["q"].clear()
        cfg = preset("3b", ternary=B.RULES[rule], activation_checkpointing=True)
        arb, _ = B._measure_model(f"3b {rule} depth={depth}", cfg, "ternary", batches, 5, 2, ["blocks-graph"], dev)
        row = {"rule": rule, "depth": depth, **arb, "ratio": dense["step_ms"] / arb["step_ms"]}
        res["bench"].append(row)
        print(f"RESULT {rule} depth={depth}: {arb['step_ms']:.1f} ms vs dense {dense['step_ms']:.1f}: "
              f"{row['ratio']:.3f}x peak {arb['peak_mib']:.0f}", flush=True)
        json.dump(res, open(OUT + '/overlap.json', 'w'), indent=1)

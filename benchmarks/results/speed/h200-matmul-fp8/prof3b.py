import sys, json, torch
sys.path.insert(0, '.')
sys.argv = ['x']
from benchmarks import bench_speed as B
from arbitor.model.config import preset
from arbitor.train.trainer import compile_blocks
dev = torch.device('cuda')
gen = torch.Generator(device=dev).manual_seed(0)
batch = torch.randint(0, 256, (8, 513), device=dev, generator=gen)
out = {}
for rule, ckpt in [("bigint-fp8all", True)]:
    cfg = preset('3b', ternary=B.RULES[rule], activation_checkpointing=ckpt)
    model = B._build(cfg, dev)
    compile_blocks(model)
    step = B._step_fn(model, None, 'ternary')
    prof = B._profile(step, batch, top=40)
    out[f'{rule}-ckpt{ckpt}'] = prof
    print(rule, ckpt, 'gpu_ms', prof['gpu_ms'], 'launches', prof['launches'], flush=True)
    for r in prof['top']:
        print(f"   {r['cuda_ms']:9.3f} {r['calls']:5d}  {r['name']}")
    model = step = None
    B._free()
json.dump(out, open(sys.argv[0].replace('x', '') or 'p.json', 'w')) if False else None
import os
json.dump(out, open(os.environ['OUT'] + '/prof3b.json', 'w'), indent=1)

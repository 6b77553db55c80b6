"""Does a compiled + CUDA-graphed ternary step learn like the eager one? (issue 13; needs CUDA)

    PYTHONPATH=. python benchmarks/check_compile_graph.py [--rule bigint|counter] [--group-size G]
        [--steps 30] [--no-sync] [--dtype bfloat16]

One H200 run of ``compile`` + ``cuda_graph`` did not learn, and the trainer refused the pair until this check
found why: at the old default group 4 every mode is unstable, and the graph replays the compiled step bit for
bit (``results/trainer/h200-compile.md``, third follow-up). It builds the four modes of ``bench_trainer.py``'s
model (nanoGPT shape, batch 64 x 256, the bundled corpus) side by side -- eager, graph, compile,
compile+graph -- steps them together and prints the losses every 5 steps and,
after every step, how many integer buffers of compile and compile+graph differ (both run the same compiled
code, so a sound capture keeps them bit-equal).

``--no-sync`` reads the losses only at the end, as ``bench_trainer.py`` does (the run that failed never
synchronised between steps); ``--group-size`` sets the layers' group (the failing run had the old default 4).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitor.data import BUNDLED_TEXT_PATH  # noqa: E402
from arbitor.train import ModelSettings, TextConfig, TrainConfig, build_run  # noqa: E402
from benchmarks.bench_trainer import MODEL  # noqa: E402

MODES = ("eager", "graph", "compile", "compile+graph")


def build(mode: str, rule: str, group_size: int | None, dtype: str, steps: int):
    tcfg = TrainConfig(steps=steps, batch=64, ctx=256, eval_interval=0, log_interval=0,
                       compile="compile" in mode, cuda_graph="graph" in mode)
    fields = dict(MODEL, compute_dtype=dtype, max_ctx=256)
    settings = ModelSettings(preset="small", update_rule=rule, group_size=group_size)
    return build_run("text", tcfg, TextConfig(text_data=str(BUNDLED_TEXT_PATH)), settings, device="cuda",
                     model_fields=fields)


def int_diffs(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    return [k for k in sa if not sa[k].is_floating_point() and not torch.equal(sa[k], sb[k])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rule", default="bigint", choices=("bigint", "counter"))
    ap.add_argument("--group-size", type=int, default=None, help="the layers' scale group (default: the preset's)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--no-sync", action="store_true", help="no host sync between steps (as bench_trainer.py)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device (CUDA graphs)")
    runs = {m: build(m, args.rule, args.group_size, args.dtype, args.steps) for m in MODES}
    print(f"rule {args.rule}, group {args.group_size or 'preset'}, {args.dtype}, "
          f"{'no sync' if args.no_sync else 'sync'} between steps", flush=True)
    history = []                          # per step: the losses, and (synced runs) the buffers that differ
    for step in range(args.steps):
        losses = {m: tr.train_step()["text"].detach().clone() for m, tr in runs.items()}  # replay reuses its output
        history.append((losses, None if args.no_sync else int_diffs(runs["compile"].model,
                                                                     runs["compile+graph"].model)))
    torch.cuda.synchronize()
    for step, (losses, diff) in enumerate(history):
        if step % 5 == 0 or diff or step == args.steps - 1:
            print(step, {m: round(float(v), 4) for m, v in losses.items()},
                  *(() if diff is None else ("compile vs compile+graph integer buffers that differ:", len(diff),
                                             diff[:3])), flush=True)
    if args.no_sync:
        diff = int_diffs(runs["compile"].model, runs["compile+graph"].model)
        print("compile vs compile+graph integer buffers that differ at the end:", len(diff), diff[:3], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the step-boundary mode (grad_accum / data parallel) learn like the online mode? (docs/distributed.md)

Each row trains the ``tiny`` preset on a text file for ``--steps`` steps of ``--seqs`` sequences and logs
the validation loss every ``--eval-every`` steps:

* ``online 1 x B``        -- one micro-batch of B sequences per step (the default trainer);
* ``online K x B/K``      -- K micro-batches per step, ballots applied online (what a plain loop of K
                             backward passes and one ``ternary_step`` does);
* ``boundary K x B/K``    -- the step-boundary mode (``--grad-accum K``), with the trainer's prior scaling
                             (``ballot_prior x K``, ``run.scale_prior``) and without it.

    PYTHONPATH=. python benchmarks/step_mode_quality.py --text ../shared/data/tinyshakespeare.txt
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitor.data import BUNDLED_TEXT_PATH  # noqa: E402
from arbitor.ternary.step import set_step_mode, ternary_step  # noqa: E402
from arbitor.train import ModelSettings, TextConfig, TrainConfig, build_run  # noqa: E402


def run(text: str, rule: str, mode: str, K: int, seqs: int, ctx: int, steps: int, every: int, prior: str) -> list:
    fields = {}
    base = build_run("text", TrainConfig(steps=1, batch=1, ctx=ctx), TextConfig(text_data=text),
                     ModelSettings(update_rule=rule)).model.cfg.ternary.ballot_prior
    if mode == "boundary" and prior == "scaled":
        fields = {"ternary": {"ballot_prior": base * K}}
    # counter_rate=None: the preset's rate (1.0) in every row; "auto" would count passes from batch = seqs // K and
    # could give the rows different rates
    tr = build_run("text", TrainConfig(steps=steps, batch=seqs // K, ctx=ctx), TextConfig(text_data=text),
                   ModelSettings(update_rule=rule, counter_rate=None), model_fields=fields)
    if mode == "boundary":
        set_step_mode(tr.model, K)
    dev = torch.device("cpu")
    evals = []
    for step in range(steps):
        for j in range(K):
            b, _ = tr.task.batch_at(seqs // K, dev, step * K + j)
            if mode == "boundary":
                for m in (x for x in tr.model.modules() if hasattr(x, "set_ballot_slot")):
                    m.set_ballot_slot(j)
            _, loss = tr.model(b.x, b.y)
            loss.backward()
        ternary_step(tr.model)
        if (step + 1) % every == 0:
            evals.append(round(tr.evaluate()["val_loss"], 4))
    return evals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", default=str(BUNDLED_TEXT_PATH))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=30)
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results" / "step-mode"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    K = args.K
    rows = [("online", 1, "-"), ("online", K, "-"), ("boundary", K, "scaled"), ("boundary", K, "as preset")]
    res = {"device": "cpu", "python": platform.python_version(), "torch": torch.__version__, "text": args.text,
           "steps": args.steps, "seqs_per_step": args.seqs, "ctx": args.ctx, "eval_every": args.eval_every,
           "command": "PYTHONPATH=. python benchmarks/step_mode_quality.py " + " ".join(argv or sys.argv[1:]),
           "rows": []}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for rule in ("bigint", "counter"):
        for mode, k, prior in rows:
            t = time.time()
            ev = run(args.text, rule, mode, k, args.seqs, args.ctx, args.steps, args.eval_every, prior)
            res["rows"].append({"update_rule": rule, "mode": mode, "micro_batches": k, "prior": prior, "val_loss": ev,
                                "seconds": round(time.time() - t, 1)})
            print(rule, mode, k, prior, ev, flush=True)
            (out / "cpu.json").write_text(json.dumps(res, indent=1))
    lines = ["# Step-boundary vs online ballots (tiny preset, CPU)", "", f"Command: `{res['command']}`", "",
             f"{args.seqs} sequences x {args.ctx} tokens per step, split into K micro-batches; validation loss "
             f"(nats/token) every {args.eval_every} steps.", "",
             "| rule | mode | K | ballot_prior | val loss |", "|---|---|---:|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['update_rule']} | {r['mode']} | {r['micro_batches']} | {r['prior']} | "
                     + " -> ".join(f"{v:.3f}" for v in r["val_loss"]) + " |")
    (out / "cpu.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

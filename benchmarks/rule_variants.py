"""Issue 18, item 3: variants of the ``counter`` rule tried on the CPU pre-study, by patching its torch reference.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/rule_variants.py VARIANT OUT_DIR ROW [ROW ...] \\
        [--data runs/quality_data/python-stdlib.txt.gz]

Runs each ``benchmarks/quality.py`` row (e.g. ``counter-b4-r1-g128``) in this process, on the CPU, with the
pre-study's settings (``cpu`` shape, byte vocabulary, 2000 steps, cosine with 40 warm-up steps, seed 0; the
command of ``results/quality/cpu-issue18-code-cpu-2000``) and the rule changed as ``VARIANT`` says -- tokens
joined by ``+``:

* ``base``        the library's rule, unchanged (reproduces the pre-study's rows bit for bit);
* ``factored``    step ``rate * |g| / sqrt(r_n c_k / mean)``: Adafactor-style row x column mean squares of this
                  ballot's ``grad_W`` instead of the row's alone (stateless);
* ``colnorm``     the column mean square alone;
* ``euni``        every scale group of a dense layer starts at one exponent (nearest to the init variance)
                  instead of the seeded mix of ``a`` and ``a + 1``;
* ``integN``      ``S = 2**(E + strength * corr_accum / (G * N))``: a fixed denominator of ``N`` ballots, so the
                  scale keeps integrating votes instead of averaging all of them;
* ``agree``       one bit per weight (the last ballot's gradient sign): a weight moves only when the sign repeats
                  (the scale votes still see every sign);
* ``crand``       counters start uniform in ``[0, L)`` instead of mid-ladder;
* ``qmc``         low-discrepancy rounding: ``u = frac(h(weight) + ballot * golden ratio)`` instead of a fresh hash;
* ``wdX``         decay of the ladder, the analogue of AdamW's decoupled weight decay: after each ballot's step a
                  weight's position moves toward the middle of the zero band by ``X * rate * (p - middle)`` rungs
                  (stochastically rounded with ``frac(u + 1/2)``; ``rate`` the layer's step size of this ballot, so
                  the schedule scales the decay as it scales AdamW's ``lr * wd``).

Longer ladders need no patch: ``base`` with ``counter-b5-...`` (32 rungs per trit, the library's 5-bit counters) or
``counter-b8-...`` rows. (The study's 32-rung rows first ran as an emulation inside 8-bit counters; the library's
``counter-b5-r2-g128`` reproduces that run bit for bit.)

Results: ``results/quality/cpu-issue18-rule-variants.md``. These are experiments, not library code: the one
change that won (a longer ladder) became the library's 5-bit counters (``format.py``); the rest are recorded
there as negative results.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import arbitor.ternary.layer as layer_module  # noqa: E402
import arbitor.ternary.ops.counter as counter_ops  # noqa: E402
import arbitor.ternary.ops.linear as linear_ops  # noqa: E402
import arbitor.ternary.rules.counter as counter_rule  # noqa: E402
from arbitor.ternary.format import pack_counters, unpack_ternary  # noqa: E402
from arbitor.ternary.ops.hashing import hash_base, uniform_from_base  # noqa: E402
from arbitor.ternary.ops.votes import group_votes  # noqa: E402
from benchmarks import quality  # noqa: E402

PHI24 = 10368890               # round(0.6180339887 * 2**24): the golden-ratio step of ``qmc``


def apply_variant(variant: str) -> None:
    norm = "base"

    for tok in variant.split("+"):
        if tok in ("base", "factored", "colnorm"):
            norm = tok
        elif tok == "euni":
            draw = layer_module.draw_exponents

            def uniform_exponents(s2, rows, groups, gen, _draw=draw):
                E = _draw(s2, rows, groups, gen)             # keep the generator's draws in step
                return torch.full_like(E, round(math.log(s2, 4)))
            layer_module.draw_exponents = uniform_exponents
        elif tok.startswith("integ"):
            n0 = float(tok[len("integ"):])

            def integ_scale(E, corr_accum, ballots, group_size, strength, _n0=n0):
                return torch.exp2(E.to(torch.float64) + strength * corr_accum.to(torch.float64)
                                  / (group_size * _n0)).to(torch.float32)
            linear_ops.bigint_scale = layer_module.bigint_scale = integ_scale
        elif tok == "agree":
            library_torch_block = counter_ops.counter_block_torch_
            last: dict = {}

            def agree_block(gw, scale, T_packed, C_packed, corr_accum, hash_key, step_counter, pending, bad, row0,
                            in_features, group_size, bits, _lib=library_torch_block):
                key = (T_packed.data_ptr(), row0)
                sg = torch.sign(gw).to(torch.int8)
                prev, last[key] = last.get(key), sg.clone()
                if prev is not None:                      # the scale votes still see the whole gradient
                    t = unpack_ternary(T_packed, in_features)
                    masked = gw * (sg == prev)
                    corr_accum += ((group_votes(gw.float(), t, group_size) - group_votes(masked.float(), t, group_size))
                                   * (bad == 0))
                    gw = masked
                _lib(gw, scale, T_packed, C_packed, corr_accum, hash_key, step_counter, pending, bad, row0,
                     in_features, group_size, bits)
            counter_ops.counter_block_torch_ = agree_block
        elif tok == "crand":
            buffers = counter_rule.CounterRule.buffers

            def random_counters(self, out_features, in_features, seed, device, _buffers=buffers):
                out = _buffers(self, out_features, in_features, seed, device)
                if device is not None and torch.device(device).type == "meta":
                    return out
                gen = torch.Generator().manual_seed(seed ^ 0x2545F491)
                c = torch.randint(0, 1 << self.counter_bits, (out_features, in_features), generator=gen)
                out["C_packed"] = pack_counters(c.to(torch.uint8).to(device), self.counter_bits, check=False)
                return out
            counter_rule.CounterRule.buffers = random_counters
        elif tok == "qmc":      # the library's step with another uniform: its hash base carries (key, ballot)
            def qmc_uniform(base, n0, n1, in_features, device):
                key, ballot = base
                u0 = uniform_from_base(hash_base(key, torch.zeros_like(ballot)), n0, n1, in_features, device)
                h = (u0 * 2.0 ** 24).to(torch.int64)                # the weight's ballot-independent draw
                return ((h + ballot * PHI24) & (2 ** 24 - 1)).to(torch.float32) * 2.0 ** -24
            counter_ops.hash_base = lambda key, ballot: (key, ballot)
            counter_ops.uniform_from_base = qmc_uniform
        elif tok.startswith("wd"):
            lam = float(tok[2:])
            state = {"rate": 1.0}
            lib_blocks = counter_ops.gradw_blocks
            lib_block = counter_ops.counter_block

            def blocks_with_rate(grad_y, x, out_features, in_features, rate, impl, _lib=lib_blocks):
                state["rate"] = float(rate)                             # this ballot's step size (schedule included)
                return _lib(grad_y, x, out_features, in_features, rate, impl)

            def decayed_block(t, c, gw, u, rate, bits, scale=None, _lib=lib_block, _lam=lam):
                t_new, c_new = _lib(t, c, gw, u, rate, bits, scale=scale)
                levels = 1 << bits
                p = (t_new.to(torch.int32) + 1) * levels + c_new.to(torch.int32)
                d2 = 2 * p - (3 * levels - 1)                           # twice the distance to the middle
                move = torch.floor(_lam * state["rate"] * d2.abs().to(torch.float32) / 2
                                   + torch.remainder(u + 0.5, 1.0))
                p = (p - torch.sign(d2) * move.to(torch.int32)).clamp_(0, 3 * levels - 1)
                t2 = torch.div(p, levels, rounding_mode="floor")
                return (t2 - 1).to(torch.int8), (p - t2 * levels).to(torch.int16)
            counter_ops.gradw_blocks = blocks_with_rate
            counter_ops.counter_block = decayed_block
        else:
            raise SystemExit(f"unknown variant token {tok!r}")

    if norm != "base":
        def blocks(grad_y, x, out_features, in_features, rate, impl, _norm=norm):
            gw = (grad_y.to(x.dtype).t() @ x).to(torch.float32).contiguous()
            bad = (~counter_ops.ballot_ok(grad_y, x)).to(torch.int32)
            g2 = gw.pow(2)
            col = g2.mean(dim=0, keepdim=True).clamp_min(1e-30)
            if _norm == "factored":
                v = g2.mean(dim=1, keepdim=True).clamp_min(1e-30) * col / g2.mean().clamp_min(1e-30)
            else:
                v = col.expand_as(gw)
            # the library's step takes a per-row scale: fold the per-weight one into grad_W (|g * s| * 1 ==
            # |g| * s exactly for s > 0, and the signs, hence the votes, do not change)
            scale = rate / v.sqrt()
            return bad, iter([(0, (gw * scale).contiguous(), torch.ones(gw.shape[0]))])
        counter_ops.gradw_blocks = blocks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variant")
    ap.add_argument("out_dir")
    ap.add_argument("rows", nargs="+")
    ap.add_argument("--data", default="runs/quality_data/python-stdlib.txt.gz")
    args = ap.parse_args(argv)
    apply_variant(args.variant)
    out = args.out_dir
    if not os.path.exists(os.path.join(out, "study.json")):   # the study's settings, no row run
        quality.main([args.data, "--shape", "cpu", "--vocab", "byte", "--steps", "2000", "--schedule", "cosine",
                      "--warmup-steps", "40", "--eval-every", "250", "--seeds", "0", "--device", "cpu",
                      "--out-dir", out, "--no-fast", "--rows", ",".join(args.rows), "--time-limit", "0.001"])
        # the orchestrator may have started a row in a subprocess (without the variant) before its deadline
        shutil.rmtree(os.path.join(out, "runs"), ignore_errors=True)
        shutil.rmtree(os.path.join(out, "rows"), ignore_errors=True)
    for row in args.rows:
        t = time.time()
        quality.main(["--row", row, "--seed", "0", "--device", "cpu", "--out-dir", out])
        rec = json.loads(Path(out, "rows", f"{quality.row_file(row, 0)}.json").read_text())
        print(args.variant, row, rec["status"], " ".join(f"{e['step']}:{e['val_loss']:.4f}" for e in rec["evals"]),
              f"{time.time() - t:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data parallelism and gradient accumulation (docs/distributed.md), on CPUs with gloo.

The contract: (a) every rank holds the same state after every step (each run below checks it every step:
``--state-check-interval 1`` stops a run whose ranks differ); (b) W processes x grad_accum A train the
model one process trains with grad_accum W*A -- every tensor of the checkpoint and every logged loss
bit-identical -- for both update rules, for text and for multimodal pretraining. Processes are started
the way a user starts them: ``torchrun --nproc-per-node W -m arbitor -- train ...``.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_dist_worker.py")
TEXT_FLAGS = ["--batch", "2", "--ctx", "16", "--max-chars", "30000", "--eval-interval", "2", "--eval-batches", "2",
              "--state-check-interval", "1", "--no-progress"]
PRETRAIN_FLAGS = ["--batch", "2", "--ctx", "16", "--eval-interval", "2", "--eval-batches", "1",
                  "--state-check-interval", "1", "--no-progress", "--text-weight", "1", "--image-weight", "1", "--code-weight", "0",
                  "--audio-weight", "0", "--video-weight", "0"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(world: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
           str(_free_port()), "-m", "arbitor", "--", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same_run(a: Path, b: Path, only_eval: bool = False) -> None:
    ta, tb = load_file(a / "checkpoint.safetensors"), load_file(b / "checkpoint.safetensors")
    assert ta.keys() == tb.keys()
    assert [k for k in ta if not torch.equal(ta[k], tb[k])] == []
    la = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    if only_eval:   # a run stopped at step N logs a train record there that the straight run does not
        la, lb = [r for r in la if "loss" not in r], [r for r in lb if "loss" not in r]
    drop = ("tokens_per_s", "mem_mb", "modality_counts", "modality")
    assert [{k: v for k, v in r.items() if k not in drop} for r in la] == \
        [{k: v for k, v in r.items() if k not in drop} for r in lb]


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("rule,extra", [("bigint", []), ("counter", []), ("counter", ["--dropout", "0.2"])],
                         ids=["bigint", "counter", "counter-dropout"])
def test_ranks_times_grad_accum_equal_one_process(tmp_path, rule, extra, run_cli):
    """With dropout too: a micro-batch's masks are keyed by (seed, step, micro-batch), like its data."""
    flags = ["train", "--steps", "3", "--update-rule", rule, *TEXT_FLAGS, *extra]
    assert run_cli([*flags, "--grad-accum", "4", "--run", "one"], tmp_path) == 0
    _check(torchrun(2, [*flags, "--grad-accum", "2", "--run", "two"], tmp_path))
    _same_run(tmp_path / "runs" / "one", tmp_path / "runs" / "two")
    if rule == "bigint":
        _check(torchrun(4, [*flags, "--grad-accum", "1", "--run", "four"], tmp_path))
        _same_run(tmp_path / "runs" / "one", tmp_path / "runs" / "four")


def test_pretrain_two_ranks_equal_one_process(tmp_path, run_cli):
    flags = ["pretrain", "--steps", "3", *PRETRAIN_FLAGS]
    assert run_cli([*flags, "--grad-accum", "4", "--run", "one"], tmp_path) == 0
    _check(torchrun(2, [*flags, "--grad-accum", "2", "--run", "two"], tmp_path))
    _same_run(tmp_path / "runs" / "one", tmp_path / "runs" / "two")


def test_resume_under_another_world_size(tmp_path, run_cli):
    flags = ["train", *TEXT_FLAGS]
    assert run_cli([*flags, "--steps", "4", "--grad-accum", "4", "--run", "straight"], tmp_path) == 0
    assert run_cli([*flags, "--steps", "2", "--grad-accum", "4", "--run", "split"], tmp_path) == 0
    _check(torchrun(2, [*flags, "--steps", "4", "--grad-accum", "2", "--run", "split", "--resume"], tmp_path))
    _same_run(tmp_path / "runs" / "straight", tmp_path / "runs" / "split", only_eval=True)
    # another number of micro-batches per step would change the step: refused, with the grad_accum to use
    proc = torchrun(2, [*flags, "--steps", "6", "--grad-accum", "1", "--run", "split", "--resume"], tmp_path)
    assert proc.returncode != 0
    assert "trained with 4 micro-batch(es) per step" in proc.stderr and "resume with grad_accum 2 x 2" in proc.stderr


def _workers(mode: str, tmp_path: Path) -> list[str]:
    port = str(_free_port())
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), "2", port, mode, str(out)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        p.wait(timeout=300)
    return [(Path(f"{out}.{r}").read_text().strip() if Path(f"{out}.{r}").exists() else None) for r in range(2)]


def test_state_check_names_the_diverged_layer(tmp_path):
    res = _workers("tamper", tmp_path)
    for r in res:
        assert r.startswith("diverged: rank 1's state differs from rank 0's at blocks.1.mlp.up"), res


def test_a_dead_rank_stops_the_others_with_a_clear_error(tmp_path):
    res = _workers("die", tmp_path)
    assert res[1] is None                                   # rank 1 died
    assert res[0].startswith("peer: rank 0:") and "a peer rank died" in res[0], res


def test_own_loop_with_ddp_beside_equals_one_process(tmp_path):
    """TernaryDataParallel in a user's loop, next to DDP (broadcast_buffers=False) for a float head. After one
    step every rank's ternary state equals one process's with all 4 micro-batches, bit for bit (the float head:
    DDP's float average, equal to float rounding). After that the float heads differ from the one-process run
    in the last bits, and so may a ballot: a model with float parameters keeps contract (a) -- all ranks equal
    -- but (b) holds exactly only for a pure ternary model."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_dist_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    ref = worker.own_loop(4, steps=1)
    assert _workers("ownloop", tmp_path) == ["ok", "ok"]
    got = [torch.load(tmp_path / f"out.{r}.pt") for r in range(2)]
    for g in got:
        for k, v in ref.items():
            if k.startswith("0."):
                assert torch.equal(g["one"][k], v), k
            else:
                assert torch.allclose(g["one"][k], v, atol=1e-6), k
    assert all(torch.equal(got[0]["three"][k], got[1]["three"][k]) for k in ref)
    assert got[0]["three"]["0.corr_accum"].abs().sum() > ref["0.corr_accum"].abs().sum() > 0


def test_chunked_loss_two_ranks_equal_one_process(tmp_path):
    """A chunked loss (``loss_chunk_tokens``, as the ``3b`` preset ships) makes the head cast one ballot per chunk:
    each micro-batch reserves ``ModelConfig.ballots_per_pass`` slots, so the counter rule's per-slot draws are the
    same on 2 ranks as in one process with grad_accum 2 (the chunks of micro-batch g take slots 2g and 2g + 1)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_dist_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    ref = worker.chunked_run(2)
    assert _workers("chunked", tmp_path) == ["ok", "ok"]
    for r in range(2):
        got = torch.load(tmp_path / f"out.{r}.pt")
        assert [k for k in ref if not torch.equal(ref[k], got[k])] == []
    assert int(ref["decoders.text.head.step_counter"]) > int(ref["blocks.0.mlp.up.step_counter"])   # 2 ballots a pass

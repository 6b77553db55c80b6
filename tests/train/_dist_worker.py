"""A data-parallel worker for tests/train/test_distributed.py (run as a script, one process per rank).

    python _dist_worker.py RANK WORLD PORT MODE OUT

MODE ``tamper``: after one step rank 1 changes one buffer; the state check must name that layer.
MODE ``die``: rank 1 exits abruptly in its second step; rank 0 must stop with a PeerError, not hang.
MODE ``chunked``: 2 steps of a text run whose loss is chunked (the head casts 2 ballots per micro-batch), counter
rule; writes the model's state dict to ``OUT.<rank>.pt`` (``chunked_run`` with grad_accum 2 in one process must match).
MODE ``ownloop``: the README's own-loop example (``own_loop``): TernaryDataParallel beside DDP; writes the
state dict to ``OUT.<rank>.pt``.
Each rank writes ``OUT.<rank>`` with one line: the outcome.
"""
import contextlib
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from arbitor.data import BUNDLED_TEXT_PATH
from arbitor.ternary.parallel import DivergedStateError, PeerError
from arbitor.train import TextConfig, TrainConfig, build_run


def own_loop(micro_batches: int, steps: int = 3):
    """A user's loop: a ternary layer and a float head, 2 micro-batches per rank, data keyed by the global
    micro-batch index. One process with ``micro_batches = world * 2`` runs it too (no process group)."""
    from torch import nn

    from arbitor.ternary import TernaryScaleTensor
    from arbitor.ternary.parallel import TernaryDataParallel
    torch.manual_seed(0)
    model = nn.Sequential(TernaryScaleTensor(16, 8, 4, seed=1, update_rule="counter"), nn.Linear(8, 3))
    distributed = dist.is_initialized()
    ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False) if distributed else model
    opt = torch.optim.SGD(model[1].parameters(), lr=0.1)
    tdp = TernaryDataParallel(model, micro_batches=micro_batches)
    for step in range(steps):
        for j in range(micro_batches):
            g = tdp.rank * micro_batches + j                        # the global micro-batch index
            gen = torch.Generator().manual_seed(1000 * step + g)
            x, y = torch.randn(5, 16, generator=gen), torch.randint(0, 3, (5,), generator=gen)
            sync = ddp.no_sync() if distributed and j < micro_batches - 1 else contextlib.nullcontext()
            with tdp.micro_batch(j), sync:
                loss = nn.functional.cross_entropy(ddp(x), y) / micro_batches   # DDP averages over ranks
                loss.backward()
        tdp.step()          # the ternary layers: summed ballots, applied on every rank
        opt.step()          # the float head: DDP averaged its gradients
        opt.zero_grad()
    return model.state_dict()


def chunked_run(grad_accum: int):
    """2 steps of the text task with ``loss_chunk_tokens`` = half a micro-batch: two ballots of the head per pass."""
    tcfg = TrainConfig(steps=2, batch=2, ctx=16, grad_accum=grad_accum, state_check_interval=1, dist_timeout=30.0)
    tr = build_run("text", tcfg, TextConfig(text_data=str(BUNDLED_TEXT_PATH), max_chars=20_000),
                   model_fields={"loss_chunk_tokens": 16, "ternary": {"update_rule": "counter"}})
    tr.train_step()
    tr.train_step()
    return tr.model.state_dict()


def main() -> None:
    rank, world, port, mode, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    if mode == "chunked":
        torch.save(chunked_run(1), f"{out}.{rank}.pt")
        with open(f"{out}.{rank}", "w") as f:
            f.write("ok\n")
        return
    if mode == "ownloop":
        torch.save({"one": own_loop(2, steps=1), "three": own_loop(2, steps=3)}, f"{out}.{rank}.pt")
        with open(f"{out}.{rank}", "w") as f:
            f.write("ok\n")
        return
    tcfg = TrainConfig(steps=4, batch=2, ctx=16, state_check_interval=1, dist_timeout=30.0)
    tr = build_run("text", tcfg, TextConfig(text_data=str(BUNDLED_TEXT_PATH), max_chars=20_000))
    result = "ok"
    try:
        tr.train_step()
        if mode == "tamper" and rank == 1:
            tr.model.blocks[1].mlp.up.corr_accum[0, 0] += 1
        if mode == "die" and rank == 1:
            os._exit(3)
        tr.train_step()
    except DivergedStateError as exc:
        result = f"diverged: {exc}"
    except PeerError as exc:
        result = f"peer: {exc}"
    with open(f"{out}.{rank}", "w") as f:
        f.write(result + "\n")


if __name__ == "__main__":
    main()

"""A data-parallel worker for tests/train/test_distributed.py (run as a script, one process per rank).

    python _dist_worker.py RANK WORLD PORT MODE OUT

MODE ``tamper``: after one step rank 1 changes one buffer; the state check must name that layer.
MODE ``die``: rank 1 exits abruptly in its second step; rank 0 must stop with a PeerError, not hang.
Each rank writes ``OUT.<rank>`` with one line: the outcome.
"""
import os
import sys
from datetime import timedelta

import torch.distributed as dist

from arbitor.data import BUNDLED_TEXT_PATH
from arbitor.ternary.parallel import DivergedStateError, PeerError
from arbitor.train import TextConfig, TrainConfig, build_run


def main() -> None:
    rank, world, port, mode, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
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
